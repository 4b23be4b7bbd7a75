"""Backend selection for every op: one registry, one rule.

Each op registers implementations under backend names:

  reference  slow, float64-friendly oracle (never chosen unless forced)
  torch      pure-torch fallback, any device
  cpp        pyllmops._C, CPU
  triton     kernels/triton/ (GPU; CPU only under TRITON_INTERPRET=1, which is how CI tests it)
  cuda       pyllmops._cuda

By default the first available backend in DEFAULT_ORDER[device] that supports the call wins.
`PYLLMOPS_BACKEND=triton` (or a comma list, tried in order) or `with use_backend("triton"):`
forces the choice; a forced backend that cannot serve the call raises instead of silently
falling back, so a test or benchmark that forces one measures that one.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from pyllmops import _ext

BACKENDS = ("reference", "torch", "cpp", "triton", "cuda")
DEFAULT_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}


@dataclass(frozen=True)
class Impl:
    fn: Callable[..., Any]
    devices: tuple[str, ...]
    available: Callable[[], bool]
    supports: Callable[..., bool] | None  # same arguments as fn; None means "everything"


_REGISTRY: dict[str, dict[str, Impl]] = {}
_forced: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("pyllmops_backend", default=None)


@functools.cache
def triton_available(device_type: str = "cuda") -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device_type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return torch.cuda.is_available()


_AVAILABLE: dict[str, Callable[[str], bool]] = {
    "reference": lambda dev: True,
    "torch": lambda dev: True,
    "cpp": lambda dev: dev == "cpu" and _ext.has_cpp(),
    "triton": triton_available,
    "cuda": lambda dev: dev == "cuda" and _ext.has_cuda(),
}


def register(op: str, backend: str, *, devices: tuple[str, ...] = ("cpu", "cuda"),
             supports: Callable[..., bool] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` as `op`'s implementation on `backend` for `devices`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = Impl(fn, devices, lambda: True, supports)
        return fn

    return deco


def _parse(names: str | tuple[str, ...]) -> tuple[str, ...]:
    items = tuple(n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip())
    for n in items:
        if n not in BACKENDS:
            raise ValueError(f"PYLLMOPS_BACKEND / use_backend: unknown backend {n!r}; choose from {BACKENDS}")
    return items


def forced_backends() -> tuple[str, ...] | None:
    ctx = _forced.get()
    if ctx is not None:
        return ctx
    env = os.environ.get("PYLLMOPS_BACKEND", "").strip()
    return _parse(env) if env else None


@contextlib.contextmanager
def use_backend(*names: str) -> Iterator[None]:
    """Force ops inside the block to run on `names` (tried in order), e.g. use_backend("triton")."""
    token = _forced.set(_parse(names))
    try:
        yield
    finally:
        _forced.reset(token)


def _usable(impl: Impl, name: str, device_type: str, args: tuple, kwargs: dict) -> bool:
    return (device_type in impl.devices and _AVAILABLE[name](device_type)
            and (impl.supports is None or bool(impl.supports(*args, **kwargs))))


def select(op: str, device: torch.device, *args: Any, **kwargs: Any) -> tuple[str, Callable]:
    """The (backend name, function) that will run `op` for these arguments."""
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no implementations registered for op {op!r}")
    forced = forced_backends()
    order = forced if forced is not None else DEFAULT_ORDER.get(device.type, ("torch",))
    for name in order:
        impl = impls.get(name)
        if impl is not None and _usable(impl, name, device.type, args, kwargs):
            return name, impl.fn
    if forced is not None:
        raise RuntimeError(
            f"{op}: forced backend(s) {list(forced)} cannot run this call on {device.type} "
            f"(registered: {sorted(impls)}; available here: {available_backends(op, device)})")
    raise RuntimeError(f"{op}: no backend supports this call on {device.type} (registered: {sorted(impls)})")


def call(op: str, device: torch.device, *args: Any, **kwargs: Any) -> Any:
    return select(op, device, *args, **kwargs)[1](*args, **kwargs)


def eager(*tensors: torch.Tensor | None) -> bool:
    """Whether a front door may run its op's implementation directly instead of through its
    torch.library custom op: plain eager execution with nothing the custom-op layer is there
    for (autograd on these tensors, torch.compile, a dispatch or function mode such as
    FakeTensorMode, tensor subclasses). That layer costs ~40 us a call with cold caches, a fifth of
    a 4096 x 4096 int4 decode GEMM on 2 CPU cores; these checks cost ~0.3 us."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()):
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is torch.Tensor and not (grad and t.requires_grad)) for t in tensors)


def serves(op: str, backend: str, device: torch.device | str, *args: Any, **kwargs: Any) -> bool:
    """Whether `backend` is registered for `op`, available on this machine and declares (its
    `supports` function) that it serves these arguments: the support matrix, in one place. A call
    forced onto a backend for which this is False raises; tests assert both sides."""
    impl = _REGISTRY.get(op, {}).get(backend)
    return impl is not None and _usable(impl, backend, torch.device(device).type, args, kwargs)


def available_backends(op: str, device: torch.device | str) -> list[str]:
    """Backends registered for `op` that can run on `device` on this machine."""
    dev = torch.device(device).type
    return [n for n, impl in _REGISTRY.get(op, {}).items() if dev in impl.devices and _AVAILABLE[n](dev)]


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)
