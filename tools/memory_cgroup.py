"""Run a command inside a child memory cgroup (v1) of this process's own, with a memory limit; only the child
process moves in. Used by tests/test_scale_memory.py and benchmarks/bench_scale.py --memory-limit."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path


def own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory directory, or None where there is no such controller."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.strip().lstrip("/")
    return None


def usable() -> bool:
    own = own_memory_cgroup()
    return own is not None and (own / "memory.limit_in_bytes").exists() and os.access(own, os.W_OK)


def run_limited(args: list[str], limit_bytes: int, timeout: float = 1800, cwd=None) -> tuple[subprocess.CompletedProcess, dict]:
    """(the finished child, {"max_usage": peak bytes charged to the cgroup (page cache included), "failcnt": times
    the limit was hit and memory reclaimed}). A child killed at the limit exits -9. `cwd`: where the child runs (a
    test runs it outside the source tree, so `import shark_export` finds the installed, built package)."""
    child = own_memory_cgroup() / f"shark-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        (child / "memory.limit_in_bytes").write_text(str(int(limit_bytes)))
        procs = str(child / "cgroup.procs")

        def enter() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        done = subprocess.run(args, preexec_fn=enter, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        usage = {"max_usage": int((child / "memory.max_usage_in_bytes").read_text()),
                 "failcnt": int((child / "memory.failcnt").read_text())}
        return done, usage
    finally:
        for _ in range(100):  # the cgroup empties once the child is reaped
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.1)
