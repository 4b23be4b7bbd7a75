"""Benchmark set-up: the device under test comes from PYLLMOPS_BENCH_DEVICE (default: cuda when
available, else cpu). Every benchmark records op/shape/backend/baseline in extra_info; the runner
(bench/__main__.py) turns those into the ratio table, and the bytes/FLOPs a row declares
(roofline_info) into its roofline columns."""
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


FLOP_KIND = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.int8: "int8", torch.float32: "fp32"}


def roofline_info(benchmark, *, nbytes: int, flops: int = 0, dtype: torch.dtype | None = None) -> None:
    """Declare the bytes a row must move (read + written) and the products it must do on `dtype`
    operands: bench/__main__.py turns them into the row's roofline columns on a known GPU."""
    benchmark.extra_info.update(bytes=nbytes, flops=flops, flop_kind=FLOP_KIND.get(dtype))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
