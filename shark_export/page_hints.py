"""Hints to the kernel about file pages: which will be read soon, which a mapping may let go, how a mapping is
read. Best effort: where the platform lacks a hint, nothing happens (the results are the same, only slower or
larger in memory)."""

from __future__ import annotations

import mmap
import os

import numpy as np


def will_need(fd: int, starts, lengths) -> None:
    """Ask the kernel to read the byte ranges [starts[k], starts[k] + lengths[k]) of `fd` now, all at once (queued
    I/O: one round of disk latency instead of one per range). Ranges on touching pages go as one request."""
    if not hasattr(os, "posix_fadvise"):
        return
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts.shape[0] == 0:
        return
    page = mmap.PAGESIZE
    first = starts // page
    last = (starts + np.asarray(lengths, dtype=np.int64).reshape(-1) - 1) // page
    order = np.argsort(first, kind="stable")
    first, reach = first[order], np.maximum.accumulate(last[order])
    begins = np.flatnonzero(np.concatenate([[True], first[1:] > reach[:-1] + 1]))
    ends = np.concatenate([begins[1:] - 1, [first.shape[0] - 1]])
    for a, b in zip(first[begins], reach[ends]):
        os.posix_fadvise(fd, int(a) * page, (int(b) - int(a) + 1) * page, os.POSIX_FADV_WILLNEED)


def drop_cached(fd: int) -> None:
    """The file's clean pages out of the page cache (written and synced: nothing is lost)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def advise_mapping(mapped: np.ndarray, advice: str, start: int = 0, end: int | None = None) -> int:
    """madvise(`advice`, a name such as "MADV_RANDOM") on the whole pages inside bytes [start, end) of a
    np.memmap's mapping. Returns the byte of the array up to which it applied (`start` where nothing was)."""
    mapping = getattr(mapped, "_mmap", None)
    flag = getattr(mmap, advice, None)
    if mapping is None or flag is None or not hasattr(mapping, "madvise"):
        return start
    end = mapped.nbytes if end is None else end
    base = int(getattr(mapped, "offset", 0)) % mmap.ALLOCATIONGRANULARITY  # where the array starts in the mapping
    first = (base + start + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    last = (base + end) // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return start
    mapping.madvise(flag, first, last - first)
    return last - base
