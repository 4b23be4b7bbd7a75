"""Benchmark set-up: the device under test comes from PYLLMOPS_BENCH_DEVICE (default: cuda when
available, else cpu). Every benchmark records op/shape/backend/baseline in extra_info; the runner
(bench/__main__.py) turns those into the ratio table."""
import os

import pytest
import torch


def bench_device() -> torch.device:
    want = os.environ.get("PYLLMOPS_BENCH_DEVICE")
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    return bench_device()


def perf_backends(op: str, device: torch.device) -> list[str]:
    """Backends worth timing: the interpreter and the reference are correctness tools, not speed."""
    from pyllmops.ops import available_backends

    skip = {"reference"} | ({"triton"} if device.type == "cpu" else set())
    return [b for b in available_backends(op, device) if b not in skip]


def record(benchmark, *, op: str, shape: str, backend: str, baseline: bool = False, **extra) -> None:
    benchmark.group = f"{op} {shape}"
    benchmark.extra_info.update(op=op, shape=shape, backend=backend, baseline=baseline, **extra)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
