"""A row source for tests/test_workers.py, importable by name in a worker process (pickled by reference)."""

import os

import numpy as np


class DyingSource:
    """Rows of ones; reading rows at or past `die_after` ends the process at once."""

    def __init__(self, rows: int, dim: int, die_after: int):
        self.shape, self.ndim, self.dtype, self.die_after = (rows, dim), 2, np.dtype(np.float32), die_after

    def read(self, r0: int, r1: int) -> np.ndarray:
        if r1 > self.die_after:
            os._exit(9)
        return np.ones((r1 - r0, self.shape[1]), np.float32)

    def take(self, ids) -> np.ndarray:
        return np.ones((len(ids), self.shape[1]), np.float32)

    def __getitem__(self, key) -> np.ndarray:
        return self.read(*key.indices(self.shape[0])[:2])
