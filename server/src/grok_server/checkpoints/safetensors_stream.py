"""Write a safetensors file one tensor at a time (the header is fixed up front from the planned shapes), so a
shard of any size is written without holding all its tensors in memory."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype tag: BF16, F16 or F32

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def header_bytes(tensors: list[PlannedTensor], metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    return len(encoded).to_bytes(8, "little") + encoded


class StreamingSafetensorsWriter:
    """Writes `tensors` in the planned order; `write()` refuses a tensor out of order or of the wrong size."""

    def __init__(self, path: Path, tensors: list[PlannedTensor]) -> None:
        self.path = Path(path)
        self.tensors = tensors
        self._next = 0
        self._file = self.path.open("wb")
        self._file.write(header_bytes(tensors))

    def write(self, name: str, data: np.ndarray) -> None:
        if self._next >= len(self.tensors):
            raise ValueError(f"{self.path.name}: unplanned tensor {name}")
        planned = self.tensors[self._next]
        if planned.name != name or tuple(data.shape) != planned.shape or data.nbytes != planned.nbytes:
            raise ValueError(
                f"{self.path.name}: expected {planned.name} {planned.shape} ({planned.dtype}) next, "
                f"got {name} {tuple(data.shape)} ({data.nbytes} bytes)"
            )
        self._file.write(np.ascontiguousarray(data).tobytes())
        self._next += 1

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            if self._next != len(self.tensors):
                missing = [t.name for t in self.tensors[self._next :]]
                raise ValueError(
                    f"{self.path.name}: {len(missing)} planned tensors not written: {missing[:3]}"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
