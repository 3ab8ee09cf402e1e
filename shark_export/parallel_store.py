"""Quantizing a conversion's tables in N processes under torch.distributed (gloo): issue 22's workers.

Rank 0 plans every table (its tiers and layout: where each row's bytes go, shark_export.quantize.TableLayout)
and allocates its payload file in the stage directory; then every rank, rank 0 included, quantizes its share
of the rows of every table read from a checkpoint straight into that file. A row's bytes depend on the row and
its tier only, so the file is byte for byte the one a single process writes. Rank 0 then packs the files,
writes the graph, checks the model and commits it, as a single process does.

The ranks come from torch.distributed:
- `convert(..., workers=N)`: this process is rank 0; it starts N-1 `python -m shark_export.parallel_store`
  processes at once (they import while rank 0 exports the model), which join a gloo group through a file in
  a temporary directory when the tables are planned, take their rows, and exit when the conversion ends;
- `convert(..., workers="distributed")`, called with the same arguments on every rank of a group that
  torch.distributed already initialized (`torchrun`): the ranks other than 0 wait for their rows, and then
  return rank 0's report (or raise its error). Across machines, the checkpoint and the output's directory
  must be on a filesystem every rank sees.
Only tables read from a checkpoint (convert's `weights=`) are split; tables held in memory, and tables with
scale groups (whose group ranges span the table), are quantized by rank 0 alone.
"""

from __future__ import annotations

import datetime
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SharkExportError
from .format import BLOCK_ROWS
from .quantize import TableLayout, encode_rows

# A worker waits for rank 0 while it exports the model, scores rows, packs and checks the output: generous.
_TIMEOUT = datetime.timedelta(hours=4)
_RENDEZVOUS = "workers.rendezvous"
_START_SECONDS = 600  # a worker's imports (torch) take seconds; a machine under load, longer


class WorkerError(SharkExportError, RuntimeError):
    """A worker process failed or could not join (its error, or how it ended)."""


@dataclass
class RowsJob:
    """Rows [r0, r1) of one table, to quantize into the table's payload file at `segment`."""

    source: Any  # the table's row source (a checkpoint's TensorSource: paths and offsets, picklable)
    layout: TableLayout  # cut to the rows of the job (TableLayout.part)
    r0: int
    r1: int
    segment: str
    clip: str

    def run(self) -> None:
        payload = np.memmap(self.segment, dtype=np.uint8, mode="r+", shape=(self.layout.nbytes,))
        encode_rows(self.source, self.layout, payload, self.r0, self.r1, clip=self.clip)
        payload.flush()  # on a shared filesystem the bytes must reach the file before rank 0 reads them
        del payload


def split_rows(rows: int, parts: int, align: int = BLOCK_ROWS) -> list[tuple[int, int]]:
    """`parts` contiguous row ranges covering [0, rows), each starting at a multiple of `align` (some may be
    empty when the table is small)."""
    blocks = -(-rows // align)
    cuts = [min(rows, (blocks * k // parts) * align) for k in range(parts + 1)]
    return list(zip(cuts, cuts[1:]))


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (to travel to rank 0), else a WorkerError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return WorkerError(f"{type(exc).__name__}: {exc}")


def _run_jobs(jobs: list) -> tuple[BaseException | None, list]:
    """(the first error, or None; the results of the jobs run before it)."""
    results = []
    try:
        for job in jobs:
            results.append(job.run())
    except Exception as exc:  # reported to rank 0, which raises it
        return _portable(exc), results
    return None, results


class WorkerGroup:
    """Rank 0's side of the worker ranks: hands out rows, collects errors, ends the group."""

    def __init__(self, world: int, children: list[subprocess.Popen], rendezvous: Path | None, owns_group: bool):
        # spawned: `rendezvous` is a file in a directory of its own, removed when the group closes
        self.world = world
        self._children = children
        self._rendezvous = rendezvous
        self._owns_group = owns_group
        self._joined = not owns_group
        self.jobs_run = 0

    @classmethod
    def spawn(cls, workers: int) -> "WorkerGroup":
        """Start `workers - 1` worker processes that will join this one (rank 0) through a file in a new temporary
        directory (also their working directory)."""
        import torch.distributed as dist

        if not dist.is_available():
            raise WorkerError("workers need torch.distributed, which this torch build lacks")
        if dist.is_initialized():
            raise WorkerError("torch.distributed is already initialized in this process: call convert with "
                              "workers='distributed' on every rank of that group instead of workers=N")
        directory = Path(tempfile.mkdtemp(prefix="shark-workers-"))
        rendezvous = directory / _RENDEZVOUS
        children = [subprocess.Popen([sys.executable, "-m", "shark_export.parallel_store", str(rank), str(workers),
                                      str(rendezvous)], stdin=subprocess.DEVNULL, cwd=str(directory))
                    for rank in range(1, workers)]
        return cls(workers, children, rendezvous, owns_group=True)

    @classmethod
    def attach(cls) -> "WorkerGroup":
        """The initialized default group of torch.distributed (torchrun), this process being its rank 0."""
        import torch.distributed as dist

        return cls(dist.get_world_size(), [], None, owns_group=False)

    def _join(self) -> None:
        import torch.distributed as dist

        if self._joined:
            return
        # Each worker marks itself ready once imported, before the rendezvous: one that fails to start is seen here
        # (its exit status named) rather than after the rendezvous's timeout.
        deadline = time.monotonic() + _START_SECONDS
        while not all((self._rendezvous.parent / f"ready-{rank}").exists() for rank in range(1, self.world)):
            if any(child.poll() is not None for child in self._children) or time.monotonic() > deadline:
                raise WorkerError(f"the {self.world - 1} worker process(es) did not start"
                                  f"{self._children_status() or f' within {_START_SECONDS} s'}")
            time.sleep(0.05)
        try:
            dist.init_process_group("gloo", init_method=self._rendezvous.as_uri(), rank=0, world_size=self.world,
                                    timeout=_TIMEOUT)
        except Exception as exc:
            raise WorkerError(f"the {self.world - 1} worker process(es) did not join: {exc}"
                              f"{self._children_status()}") from exc
        self._joined = True

    def _children_status(self) -> str:
        ended = [(k + 1, c.poll()) for k, c in enumerate(self._children) if c.poll() not in (None, 0)]
        return "".join(f"; worker {rank} exited with {code}" for rank, code in ended)

    def quantize(self, jobs: list[RowsJob], own_work=None) -> None:
        """Split every job's rows among the ranks and run them (rank 0 then runs `own_work()`: the tables only it
        quantizes); raises the first error of any rank."""
        shares: list[list[RowsJob]] = [[] for _ in range(self.world)]
        for job in jobs:
            for rank, (r0, r1) in enumerate(split_rows(job.r1 - job.r0, self.world, job.layout.chunk_rows())):
                if r1 > r0:
                    part = job.layout.part(job.r0 + r0, job.r0 + r1)
                    shares[rank].append(RowsJob(job.source, part, job.r0 + r0, job.r0 + r1, job.segment, job.clip))
        self.run(shares, own_work)

    def spread(self, jobs: list, sizes: list[int]) -> list:
        """Run whole jobs across the ranks, the largest first on the least loaded rank; their results in order."""
        shares: list[list[int]] = [[] for _ in range(self.world)]
        load = [0] * self.world
        for k in sorted(range(len(jobs)), key=lambda k: -sizes[k]):
            rank = min(range(self.world), key=lambda r: load[r])
            shares[rank].append(k)
            load[rank] += sizes[k]
        results = self.run([[jobs[k] for k in share] for share in shares])
        ordered: list[Any] = [None] * len(jobs)
        for share, done in zip(shares, results):
            for k, result in zip(share, done):
                ordered[k] = result
        return ordered

    def run(self, shares: list[list], own_work=None) -> list[list]:
        """Rank k runs the jobs `shares[k]` (objects with a `run()`, picklable); rank 0 then runs `own_work()`.
        Returns each rank's results; raises the first error of any rank."""
        import torch.distributed as dist

        self._join()
        mine: list[Any] = [None]
        try:
            dist.scatter_object_list(mine, [("jobs", share) for share in shares], src=0)
        except Exception as exc:
            raise WorkerError(f"could not hand jobs to the workers: {exc}{self._children_status()}") from exc
        error, results = _run_jobs(mine[0][1])
        if error is None and own_work is not None:
            try:
                own_work()
            except Exception as exc:
                error = exc
        gathered: list[Any] = [None] * self.world
        try:
            dist.gather_object((None, None), gathered, dst=0)
        except Exception as exc:
            raise WorkerError(f"a worker failed: {exc}{self._children_status()}") from exc
        self.jobs_run += sum(len(s) for s in shares)
        if error is not None:
            raise error
        for worker_error, _ in gathered[1:]:
            if worker_error is not None:
                raise worker_error
        return [results] + [done for _, done in gathered[1:]]

    def close(self, outcome: Any) -> None:
        """Tell every worker the conversion ended (`outcome`: the report, or the exception rank 0 raises) and
        let the group go."""
        import torch.distributed as dist

        try:
            if self._joined:
                dist.scatter_object_list([None], [("end", _portable(outcome) if isinstance(outcome, BaseException)
                                                   else outcome)] * self.world, src=0)
        except Exception:
            pass  # a worker already gone: nothing to tell it
        finally:
            if self._owns_group:
                if self._joined:
                    dist.destroy_process_group()
                else:  # they wait to join a group that will not form
                    for child in self._children:
                        child.kill()
                for child in self._children:
                    try:
                        child.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
                shutil.rmtree(self._rendezvous.parent, ignore_errors=True)


def serve() -> Any:
    """A worker rank's side, in the default group: quantize the rows rank 0 hands out until it ends the
    conversion; returns its outcome (a report, or an exception)."""
    import torch.distributed as dist

    while True:
        message: list[Any] = [None]
        dist.scatter_object_list(message, None, src=0)
        kind, body = message[0]
        if kind == "end":
            return body
        dist.gather_object(_run_jobs(body), None, dst=0)


def _main(argv: list[str]) -> None:
    import torch.distributed as dist

    rank, world, rendezvous = int(argv[0]), int(argv[1]), Path(argv[2])
    (rendezvous.parent / f"ready-{rank}").touch()  # imported: rank 0 may now wait for the rendezvous
    dist.init_process_group("gloo", init_method=rendezvous.as_uri(), rank=rank, world_size=world, timeout=_TIMEOUT)
    try:
        serve()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is written and flushed: no interpreter teardown (a second) for rank 0 to wait on


if __name__ == "__main__":
    _main(sys.argv[1:])
