"""Shared test set-up. Without a CUDA GPU, TRITON_INTERPRET=1 is set here, before any pyllmops
kernel module is imported (triton.jit reads it then): Triton kernels then run on the CPU. With a
GPU it is left unset, so the `gpu` tests run compiled Triton; an explicit TRITON_INTERPRET wins.

Randomness is replayable: one session seed (PYLLMOPS_TEST_SEED, else drawn fresh and printed in
the session header) and each test's node id give that test's seed, which seeds torch, random and
numpy before the test runs (the `seed` fixture returns it). Rerunning with the printed
PYLLMOPS_TEST_SEED reproduces any test exactly, alone or in the full suite, in any order.

PYLLMOPS_REQUIRE=cpp,avx512 (CI sets it) turns a backend that should be present but failed to load
into a test failure instead of fewer tests (see `cpu_backends`)."""
import collections
import hashlib
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SESSION_SEED = int(os.environ.get("PYLLMOPS_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))


def test_seed(nodeid: str) -> int:
    """The seed of the test `nodeid` in this session: a hash of the session seed and the id."""
    digest = hashlib.blake2b(f"{SESSION_SEED}:{nodeid}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


test_seed.__test__ = False  # not a test, despite its name


def pytest_report_header(config):
    return f"pyllmops: PYLLMOPS_TEST_SEED={SESSION_SEED} (set it to replay this run's random inputs)"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on a GPU runner)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything(request):
    s = test_seed(request.node.nodeid)
    torch.manual_seed(s)
    random.seed(s)
    try:
        import numpy

        numpy.random.seed(s)
    except ImportError:
        pass
    return s


@pytest.fixture
def seed(_seed_everything):
    """This test's seed (torch, random and numpy are already seeded with it)."""
    return _seed_everything


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        reasons = collections.Counter(_skip_reason(r) for r in skipped)
        terminalreporter.section(f"{len(skipped)} skipped, by reason")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:6d}  {reason}")
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        terminalreporter.write_line(f"replay these inputs: PYLLMOPS_TEST_SEED={SESSION_SEED} pytest <test id>")


def _skip_reason(report) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def required_backends() -> set[str]:
    return {r.strip() for r in os.environ.get("PYLLMOPS_REQUIRE", "").split(",") if r.strip()}


def cpu_backends(op: str) -> list[str]:
    """Every backend of `op` that can run on CPU here (reference excluded): the torch fallback,
    the C++ core, Triton under the interpreter. A backend named in PYLLMOPS_REQUIRE that is
    registered for `op` but cannot run here raises (a collection error) instead of vanishing."""
    from pyllmops.ops import available_backends
    from pyllmops.ops._dispatch import _REGISTRY

    found = [b for b in available_backends(op, "cpu") if b != "reference"]
    missing = [b for b in required_backends() & {"cpp", "triton"}
               if b in _REGISTRY.get(op, {}) and "cpu" in _REGISTRY[op][b].devices and b not in found]
    if missing:
        raise RuntimeError(f"PYLLMOPS_REQUIRE={os.environ['PYLLMOPS_REQUIRE']} but {op} has no {missing} backend "
                           f"here (pyllmops._C not importable, or TRITON_INTERPRET unset on a machine without a GPU)")
    return found
