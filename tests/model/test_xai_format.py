"""The ckpt-0 shard reader refuses everything but Grok-1 tensors, and reads what xAI's code writes."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from grok_server.checkpoints import xai
from grok_server.checkpoints.tiny import round_to_bfloat16
from grok_server.checkpoints.xai import QuantizedWeight8bit, XaiFormatError, dumps_shard, loads_shard

GENUINE = Path(__file__).parent / "data" / "xai_qw8_bf16_ml_dtypes.pkl"


def test_reads_a_genuine_ml_dtypes_pickle() -> None:
    value = loads_shard(GENUINE.read_bytes())
    assert isinstance(value, QuantizedWeight8bit)
    np.testing.assert_array_equal(value.weight, np.array([[1, -2], [3, 4]], dtype=np.int8))
    np.testing.assert_array_equal(value.scales, np.array([[1.5, -2.0]], dtype=np.float32))
    np.testing.assert_array_equal(value.dequantize(), np.array([[1.5, 4.0], [4.5, -8.0]], dtype=np.float32))


def test_writer_is_byte_identical_to_xais_pickles() -> None:
    value = xai.QuantizedWeightToWrite(
        np.array([[1, -2], [3, 4]], dtype=np.int8),
        xai.Bfloat16Array(np.array([[1.5, -2.0]], dtype=np.float32)),
    )
    assert dumps_shard(value) == GENUINE.read_bytes()


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


@dataclass
class QuantizedWeight8bit_:
    weight: np.ndarray
    scales: np.ndarray


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_refuses_code_execution(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(_RunsACommand(marker), protocol=protocol)
    with pytest.raises(XaiFormatError, match=r"(posix|os)\.system.*refusing"):
        loads_shard(data)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([object()], dtype=object), "non-numeric array dtype|builtins.object"),
        ({"weight": 1}, "builtins.dict|expected an array"),
        (QuantizedWeight8bit_(np.zeros(2, np.int8), np.ones(2, np.float32)), "QuantizedWeight8bit_"),
        (QuantizedWeight8bit(np.zeros((2, 3), np.float32), np.ones((1, 3), np.float32)), "weight is float32"),
        (QuantizedWeight8bit(np.zeros((2, 3), np.int8), np.ones((1, 2), np.float32)), "do not broadcast"),
    ],
)
def test_refuses_unexpected_content(value: object, message: str) -> None:
    with pytest.raises(XaiFormatError, match=message):
        loads_shard(dumps_shard(value))  # type: ignore[arg-type]


def test_refuses_truncated_and_empty_shards() -> None:
    data = dumps_shard(np.arange(64, dtype=np.float32))
    with pytest.raises(XaiFormatError, match=r"truncated|corrupt"):
        loads_shard(data[: len(data) // 2])
    with pytest.raises(XaiFormatError, match=r"truncated|corrupt"):
        loads_shard(data[:-1])
    with pytest.raises(XaiFormatError, match="empty file"):
        loads_shard(b"")
    with pytest.raises(XaiFormatError, match="corrupt"):
        loads_shard(b"\x80\x04not a pickle")


class _ShortArray:
    """Pickles as a numpy array whose data is 4 bytes short of its declared shape."""

    def __reduce__(self) -> tuple[object, ...]:
        state = (1, (4, 4), np.dtype(np.float32), False, bytes(60))
        return (xai._NUMPY_RECONSTRUCT, (np.ndarray, (0,), b"b"), state)


def test_refuses_an_array_whose_bytes_do_not_fit_its_shape() -> None:
    with pytest.raises(XaiFormatError, match="60 bytes, 64 expected"):
        loads_shard(pickle.dumps(_ShortArray(), protocol=4))


class _HugeBuffer:
    """Pickles as numpy's protocol-5 array constructor with an int where its data should be: bytes(10**14)
    would try to allocate 100 TB."""

    def __reduce__(self) -> tuple[object, ...]:
        frombuffer = np.ones(2).__reduce_ex__(5)[0]  # numpy's _frombuffer
        return (frombuffer, (10**14, np.dtype(np.float32), (1,), "C"))


def test_refuses_array_data_that_is_not_bytes() -> None:
    with pytest.raises(XaiFormatError, match="array data is not raw bytes"):
        loads_shard(pickle.dumps(_HugeBuffer(), protocol=4))


@settings(max_examples=50, deadline=None)
@given(
    weight=hnp.arrays(np.int8, hnp.array_shapes(min_dims=2, max_dims=3, max_side=5)),
    data=st.data(),
)
def test_quantized_weights_round_trip(weight: np.ndarray, data: st.DataObject) -> None:
    scale_shape = (*weight.shape[:-2], 1, weight.shape[-1])
    scales = round_to_bfloat16(
        data.draw(hnp.arrays(np.float32, scale_shape, elements=st.floats(-1e3, 1e3, width=32)))
    )
    value = loads_shard(dumps_shard(xai.QuantizedWeightToWrite(weight, xai.Bfloat16Array(scales))))
    assert isinstance(value, QuantizedWeight8bit)
    np.testing.assert_array_equal(value.weight, weight)
    np.testing.assert_array_equal(value.scales, scales)
    np.testing.assert_array_equal(value.dequantize(), weight.astype(np.float32) * scales)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float32, hnp.array_shapes(max_dims=3, max_side=6), elements=st.floats(width=32, allow_nan=False)
    )
)
def test_float_arrays_round_trip(values: np.ndarray) -> None:
    np.testing.assert_array_equal(loads_shard(dumps_shard(values)), values)
    # bfloat16 arrays come back as the float32 values they denote.
    as_bf16 = round_to_bfloat16(values)
    np.testing.assert_array_equal(loads_shard(dumps_shard(xai.Bfloat16Array(as_bf16))), as_bf16)
