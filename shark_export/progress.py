"""Progress bars on long steps (tqdm), silent unless asked for."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress(iterable=None, *, total: int | None = None, desc: str = "", enabled: bool = True):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
