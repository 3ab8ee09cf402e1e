"""One line saying where a benchmark ran: host, CPU, load, commit (and whether the measured code is dirty)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def source_state() -> str:
    """The commit, and whether the converter or the kernels differ from it (numbers depend on both)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "shark_export", "custom_ops"], cwd=repo, capture_output=True, text=True).stdout
        return f"commit {head}" + (" + uncommitted changes in shark_export/ or custom_ops/" if dirty.strip() else "")
    except OSError:
        return "commit unknown"


def machine(versions: str) -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} logical cores, load avg {os.getloadavg()[0]:.1f}; "
            f"{source_state()}; {versions}")
