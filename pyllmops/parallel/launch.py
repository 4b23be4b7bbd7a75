"""Run a function on `world` local processes joined in a gloo (or NCCL) group over loopback, with
a bounded wall time: what `pyllmops generate --tp N` uses on one machine, and what the tests use.
(Across machines, launch with torchrun and call init_tensor_parallel() instead.)

Each rank's outcome comes back to the caller, errors included, so a failing rank and the peers
it took down are all reported instead of a hang."""
from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from pyllmops.parallel.group import TPGroup, init_tensor_parallel


@dataclass
class RankOutcome:
    rank: int
    ok: bool
    value: Any = None
    error: str = ""        # "ExceptionType: message" when not ok
    traceback: str = ""
    seconds: float = 0.0   # from process start to its outcome


class SpawnError(RuntimeError):
    """Some rank failed (or never reported before the deadline); the message lists every rank."""

    def __init__(self, outcomes: list[RankOutcome]):
        self.outcomes = outcomes
        lines = [f"rank {o.rank}: {'ok' if o.ok else o.error}" for o in outcomes]
        super().__init__("tensor-parallel run failed:\n  " + "\n  ".join(lines))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _context():
    """forkserver: the server process imports torch once, then every rank is forked from it (a
    fork of a process that never ran a parallel op, so no OpenMP pool is inherited); a fresh
    `spawn` would import torch again per rank, which dominates short runs."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "pyllmops.parallel.launch"])
    return ctx


def _worker(fn, rank, world, port, backend, timeout_s, threads, args, results) -> None:
    start = time.monotonic()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    if threads:
        torch.set_num_threads(threads)
    import torch.distributed as dist

    try:
        tp = init_tensor_parallel(backend, timeout=timeout_s)
        value = fn(tp, *args)
        results.put(RankOutcome(rank, True, value, seconds=time.monotonic() - start))
    except BaseException as err:  # report everything, KeyboardInterrupt included, then exit
        results.put(RankOutcome(rank, False, None, f"{type(err).__name__}: {err}", traceback.format_exc(),
                                time.monotonic() - start))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world: int, args: tuple = (), *, backend: str | None = None,
          timeout: float | timedelta = 60.0, deadline: float | None = None, threads: int | None = None,
          raise_errors: bool = True) -> list[RankOutcome]:
    """Run fn(tp: TPGroup, *args) on `world` fresh processes (forked from a forkserver: fn must be
    a module-level function and args picklable) joined through 127.0.0.1 on a free port.

    timeout: the process-group timeout (bounds each collective). deadline: seconds the whole run
    may take (default 3 * timeout + 60) before stragglers are killed. threads: torch threads per
    rank (default: the CPU count shared out). Returns one RankOutcome per rank, in rank order;
    raises SpawnError if any rank failed, unless raise_errors=False."""
    timeout_s = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    deadline = 3 * timeout_s + 60 if deadline is None else deadline
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world, port, backend, timeout_s, threads, args, results),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    outcomes: dict[int, RankOutcome] = {}
    end = time.monotonic() + deadline
    while len(outcomes) < world and time.monotonic() < end:
        try:
            o = results.get(timeout=0.2)
            outcomes[o.rank] = o
        except queue.Empty:
            # A rank killed by a signal never reports: stop waiting for it.
            for r, p in enumerate(procs):
                if r not in outcomes and not p.is_alive() and p.exitcode not in (0, None):
                    outcomes[r] = RankOutcome(r, False, error=f"process exited with code {p.exitcode} without reporting")
    for p in procs:
        p.join(timeout=max(0.0, min(5.0, end - time.monotonic())))
        if p.is_alive():
            p.kill()
            p.join()
    ordered = [outcomes.get(r) or RankOutcome(r, False, error=f"no result within the {deadline:.0f} s deadline (killed)")
               for r in range(world)]
    if raise_errors and not all(o.ok for o in ordered):
        raise SpawnError(ordered)
    return ordered
