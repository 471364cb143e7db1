"""xAI's original Grok-1 checkpoint format (`ckpt-0/tensor{index:05d}_{host:03d}`): safe reading and writing.

Each shard is a Python pickle of one parameter: a numpy array, or a `QuantizedWeight8bit` (an int8 `weight`
with bfloat16 `scales`, pickled as `__main__.QuantizedWeight8bit`; bfloat16 is `ml_dtypes.bfloat16`). A
pickle can run arbitrary code, so shards are read with `RestrictedUnpickler`, which resolves only the few
globals such a shard needs and rebuilds arrays from raw bytes itself (numpy is never asked to unpickle an
arbitrary object, and neither ml_dtypes nor jax is needed). Anything else is refused with `XaiFormatError`.

The writer produces the same pickles (for tests and tiny checkpoints).
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grok_server.checkpoints.naming import Grok1Shape, XaiLeaf, xai_leaf_targets, xai_leaves

SHARD_NAME = "tensor{index:05d}_{host:03d}"


class XaiFormatError(ValueError):
    """A ckpt-0 shard or directory is not what a Grok-1 checkpoint should be."""


@dataclass
class QuantizedWeight8bit:
    """The original's int8 weight with per-channel scales; the real value is `weight * scales`."""

    weight: np.ndarray
    scales: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    def dequantize(self) -> np.ndarray:
        """float32 `weight * scales` (exact: an int8 times a bfloat16 fits float32's mantissa)."""
        return self.weight.astype(np.float32) * self.scales.astype(np.float32)


# --- bfloat16 without ml_dtypes ---------------------------------------------------------------------------


class _Bfloat16:
    """Stands for `ml_dtypes.bfloat16` inside a pickle (numpy has no bfloat16 of its own)."""


class _Bfloat16Dtype:
    """What `numpy.dtype(ml_dtypes.bfloat16, ...)` unpickles to here; numpy then sets its state."""

    itemsize = 2

    def __setstate__(self, state: Any) -> None:
        pass


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Exact for bfloat16-representable values (round to nearest even otherwise)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


# --- reading ----------------------------------------------------------------------------------------------

_NUMERIC_KINDS = frozenset("biuf")


def _make_dtype(obj: Any, align: bool = False, copy: bool = True) -> np.dtype | _Bfloat16Dtype:
    if obj is _Bfloat16:
        return _Bfloat16Dtype()
    if not isinstance(obj, str):
        raise XaiFormatError(f"unexpected dtype descriptor {obj!r}")
    dtype = np.dtype(obj)
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise XaiFormatError(f"refusing non-numeric array dtype {dtype!r}")
    return dtype


def _array_from_bytes(raw: bytes, dtype: Any, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise XaiFormatError(f"bad array shape {shape!r}")
    if not isinstance(raw, bytes | bytearray):
        raise XaiFormatError("array data is not raw bytes")
    bfloat16 = isinstance(dtype, _Bfloat16Dtype)
    base = np.dtype(np.uint16) if bfloat16 else dtype
    if not isinstance(base, np.dtype):
        raise XaiFormatError(f"unexpected array dtype {dtype!r}")
    expected = math.prod(shape) * base.itemsize
    if len(raw) != expected:
        raise XaiFormatError(f"array data has {len(raw)} bytes, {expected} expected for {shape} {base}")
    array = np.frombuffer(raw, dtype=base).reshape(shape, order="F" if fortran else "C")
    return bfloat16_bits_to_float32(array) if bfloat16 else array


class _PendingArray:
    """`numpy.core.multiarray._reconstruct(...)` result: filled by the pickle's BUILD with the array state."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        try:
            _version, shape, dtype, fortran, raw = state
        except (TypeError, ValueError):
            raise XaiFormatError("unexpected array state in pickle") from None
        self.array = _array_from_bytes(raw, dtype, tuple(shape), bool(fortran))


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> _PendingArray:
    if subtype is not _NdarrayMarker:
        raise XaiFormatError("only plain numpy arrays may be reconstructed")
    return _PendingArray()


def _frombuffer(buffer: Any, dtype: Any, shape: tuple[int, ...], order: str) -> np.ndarray:
    # numpy's pickle protocol 5 path (data in-band as a bytearray/PickleBuffer).
    if not isinstance(buffer, bytes | bytearray | pickle.PickleBuffer):
        raise XaiFormatError("array data is not raw bytes")  # bytes(10**14) would allocate, not fail
    raw = bytes(buffer.raw() if isinstance(buffer, pickle.PickleBuffer) else buffer)
    return _array_from_bytes(raw, dtype, tuple(shape), order == "F")


class _NdarrayMarker:
    """Stands for `numpy.ndarray` as the subtype argument of `_reconstruct`."""


_QUANTIZED_WEIGHT_MODULES = ("__main__", "model", "grok_server.checkpoints.xai")
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_BFLOAT16_MODULES = ("ml_dtypes", "ml_dtypes._ml_dtypes_ext", "jax.numpy", "jax._src.dtypes")

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "QuantizedWeight8bit"): QuantizedWeight8bit for module in _QUANTIZED_WEIGHT_MODULES},
    **{(module, "_reconstruct"): _reconstruct for module in _NUMPY_CORE},
    **{(module, "_frombuffer"): _frombuffer for module in _NUMPY_NUMERIC},
    **{(module, "bfloat16"): _Bfloat16 for module in _BFLOAT16_MODULES},
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _make_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ckpt-0 shards and nothing else: only the globals above can be named by the pickle."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise XaiFormatError(
                f"pickle refers to {module}.{name}, which a Grok-1 ckpt-0 shard never contains; "
                "refusing to load it"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise XaiFormatError("pickle uses persistent ids, which a Grok-1 ckpt-0 shard never contains")


def _materialise(obj: Any) -> np.ndarray | QuantizedWeight8bit:
    if isinstance(obj, _PendingArray) and obj.array is not None:
        return obj.array
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, QuantizedWeight8bit):
        fields = getattr(obj, "__dict__", {})
        if set(fields) != {"weight", "scales"}:
            raise XaiFormatError(
                f"QuantizedWeight8bit with fields {sorted(fields)}, expected weight and scales"
            )
        weight, scales = _materialise(fields["weight"]), _materialise(fields["scales"])
        if not isinstance(weight, np.ndarray) or not isinstance(scales, np.ndarray):
            raise XaiFormatError("QuantizedWeight8bit must hold two arrays")
        if weight.dtype != np.int8:
            raise XaiFormatError(f"QuantizedWeight8bit weight is {weight.dtype}, expected int8")
        try:
            np.broadcast_shapes(weight.shape, scales.shape)
        except ValueError:
            raise XaiFormatError(f"scales {scales.shape} do not broadcast to weight {weight.shape}") from None
        return QuantizedWeight8bit(weight, scales)
    raise XaiFormatError(f"shard holds a {type(obj).__name__}, expected an array or a QuantizedWeight8bit")


def loads_shard(data: bytes) -> np.ndarray | QuantizedWeight8bit:
    """Decode one shard's bytes (raises XaiFormatError on anything unexpected, truncated or corrupt)."""
    if not data:
        raise XaiFormatError("empty file")
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except XaiFormatError:
        raise
    except EOFError:
        raise XaiFormatError("truncated pickle (ends before its STOP opcode)") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise XaiFormatError(f"corrupt pickle: {exc}") from None
    return _materialise(obj)


def load_shard(path: Path) -> np.ndarray | QuantizedWeight8bit:
    try:
        return loads_shard(Path(path).read_bytes())
    except XaiFormatError as exc:
        raise XaiFormatError(f"{path}: {exc}") from None


# --- writing ----------------------------------------------------------------------------------------------


_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class Bfloat16Array:
    """Pickles as an ml_dtypes bfloat16 numpy array would (values must be bfloat16-representable)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float32)

    def __reduce__(self) -> tuple[Any, ...]:
        raw = float32_to_bfloat16_bits(self.values).tobytes()
        state = (1, self.values.shape, _Bfloat16DtypeForPickle(), False, raw)
        return (_NUMPY_RECONSTRUCT, (np.ndarray, (0,), b"b"), state)


class _Bfloat16DtypeForPickle:
    def __reduce__(self) -> tuple[Any, ...]:
        # numpy pickles a user-defined dtype as dtype(<scalar type>, False, True) plus its state.
        return (np.dtype, (_Bfloat16, False, True), (3, "<", None, None, None, 2, 2, 64))


@dataclass
class QuantizedWeightToWrite:
    """Pickles as xAI's QuantizedWeight8bit with bfloat16 scales."""

    weight: np.ndarray  # int8
    scales: Bfloat16Array


# The pure-Python pickler, unlike the C one, lets save_global be overridden.
class _XaiPickler(pickle._Pickler):  # type: ignore[misc]
    """Writes the globals a real ckpt-0 shard names, not this module's stand-ins."""

    _NAMES: dict[Any, tuple[str, str]] = {
        QuantizedWeight8bit: ("__main__", "QuantizedWeight8bit"),
        QuantizedWeightToWrite: ("__main__", "QuantizedWeight8bit"),
        _Bfloat16: ("ml_dtypes", "bfloat16"),
    }

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = self._NAMES.get(obj)
        if target is None:
            super().save_global(obj, name)
            return
        module, qualname = target
        self.save(module)
        self.save(qualname)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def dumps_shard(value: np.ndarray | QuantizedWeight8bit | QuantizedWeightToWrite | Bfloat16Array) -> bytes:
    buffer = io.BytesIO()
    _XaiPickler(buffer, protocol=4).dump(value)
    return buffer.getvalue()


def shard_path(ckpt_dir: Path, index: int, host: int = 0) -> Path:
    return Path(ckpt_dir) / SHARD_NAME.format(index=index, host=host)


def _leaf_value(
    leaf: XaiLeaf, tensors: dict[str, HpcaiTensor]
) -> np.ndarray | QuantizedWeightToWrite | Bfloat16Array:
    """One ckpt-0 leaf from hpcai tensors (PyTorch layout); quantized ones from their int8 and scales."""
    targets = xai_leaf_targets(leaf)
    if leaf.quantized:
        # PyTorch [out, in] with scales [out, 1] -> JAX [in, out] with scales [1, out]; experts stacked.
        weights, scales = [], []
        for name in targets:
            tensor = tensors[name]
            if tensor.int8 is None or tensor.scales is None:
                raise ValueError(f"{name}: a quantized ckpt-0 leaf needs int8 weights and scales")
            weights.append(tensor.int8.T)
            scales.append(tensor.scales.T)
        if leaf.path.split("/")[-2] == "moe":
            weight, scale = np.stack(weights), np.stack(scales)
        else:
            weight, scale = weights[0], scales[0]
        return QuantizedWeightToWrite(np.ascontiguousarray(weight), Bfloat16Array(scale))
    (name,) = targets
    values = tensors[name].values
    if leaf.param == "embeddings":
        return Bfloat16Array(values)
    if leaf.path.endswith("/router"):
        return np.ascontiguousarray(values.T)
    return np.ascontiguousarray(values)


@dataclass
class HpcaiTensor:
    """A generated tensor: float32 values, and for linear weights the int8 and scales they came from."""

    values: np.ndarray
    int8: np.ndarray | None = None
    scales: np.ndarray | None = None


def write_xai_checkpoint(
    ckpt_dir: Path, shape: Grok1Shape, tensors: Iterable[tuple[str, HpcaiTensor]]
) -> None:
    """Write `ckpt_dir/tensorNNNNN_000` shards, one per leaf, in ckpt-0's file order."""
    by_name = dict(tensors)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for index, leaf in enumerate(xai_leaves(shape)):
        shard_path(ckpt_dir, index).write_bytes(dumps_shard(_leaf_value(leaf, by_name)))
