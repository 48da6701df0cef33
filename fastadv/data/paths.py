"""A compact list of file paths: one bytes buffer and an end offset per path, so that a data set
of millions of files holds no Python object per file (8 bytes plus the path's bytes each,
against about 100 for a list of str, while indexing as well as after), and DataLoader worker
processes, which inherit it by fork, never touch (and so never copy) per-file reference counts."""

from __future__ import annotations

import os
from array import array


class Paths:
    """Paths (str) appended with `append`, kept encoded with os.fsencode (names that are not
    valid UTF-8 survive the round trip); indexed like a list."""

    def __init__(self):
        self._buffer, self._ends = bytearray(), array("q")

    def append(self, path: str) -> None:
        self._buffer += os.fsencode(path)
        self._ends.append(len(self._buffer))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"path index {index} out of range for {len(self)} paths")
        start = self._ends[index - 1] if index else 0
        return os.fsdecode(bytes(self._buffer[start : self._ends[index]]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def nbytes(self) -> int:
        """The bytes the paths take (buffer and offsets)."""
        return len(self._buffer) + self._ends.itemsize * len(self._ends)
