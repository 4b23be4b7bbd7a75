"""Calibration statistics: what the inputs of a model's linear layers look like on sample data.

    input_absmax(model, batches, names) -> {name: absmax [K] float32}
    input_samples(model, batches, names) -> {name: [T, K] float32 rows (every 8th token)}

input_absmax records, for every named nn.Module (by default every nn.Linear), the per-input-channel maximum
of |x| over all tokens of all batches, through forward pre-hooks. SmoothQuant derives its
smoothing factors from it, and static per-tensor activation scales are its maximum / 127.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


def run_model(model: nn.Module, batch: Any) -> Any:
    """Feed one calibration batch: a tuple/list is unpacked as positional arguments, a dict as
    keyword arguments, anything else (e.g. a [B, T] token-id tensor) is passed as is."""
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch)


def _each_input(model: nn.Module, batches: Iterable[Any], names: Iterable[str] | None,
                record: Callable[[str, torch.Tensor], None], desc: str, progress: bool) -> None:
    """Run `model` on each batch (see run_model) under torch.no_grad(), calling record(name,
    x [tokens, K]) with the input of every module in `names` (default: every nn.Linear)."""
    modules = dict(model.named_modules())
    wanted = [n for n, m in modules.items() if isinstance(m, nn.Linear)] if names is None else list(names)
    missing = [n for n in wanted if n not in modules]
    if missing:
        raise ValueError(f"names: no such modules in the model: {missing[:5]}")

    def hook(name):
        def pre_hook(_module, args, kwargs):
            x = (args[0] if args else next(iter(kwargs.values()))).detach()
            record(name, x.reshape(-1, x.shape[-1]))
        return pre_hook

    handles = [modules[n].register_forward_pre_hook(hook(n), with_kwargs=True) for n in wanted]
    try:
        total = len(batches) if hasattr(batches, "__len__") else None
        with torch.no_grad():
            for batch in tqdm(batches, desc=desc, total=total, disable=not progress, leave=False):
                run_model(model, batch)
    finally:
        for h in handles:
            h.remove()


def input_samples(model: nn.Module, batches: Iterable[Any], names: Iterable[str] | None = None, *,
                  every: int = 8, max_rows: int = 1024, desc: str = "sampling activations",
                  progress: bool = True) -> dict[str, torch.Tensor]:
    """{module name: [T, K] float32 input rows}: every `every`-th token of each batch, at most
    `max_rows` per module (SmoothQuant's alpha auto-tuning measures quantization error on them)."""
    rows: dict[str, list[torch.Tensor]] = {}
    kept: dict[str, int] = {}

    def record(name, x):
        take = x[::every][:max_rows - kept.get(name, 0)].float().clone()
        if take.shape[0]:
            rows.setdefault(name, []).append(take)
            kept[name] = kept.get(name, 0) + take.shape[0]

    _each_input(model, batches, names, record, desc, progress)
    return {n: torch.cat(r) for n, r in rows.items()}


def input_absmax(model: nn.Module, batches: Iterable[Any], names: Iterable[str] | None = None, *,
                 desc: str = "calibrating", progress: bool = True) -> dict[str, torch.Tensor]:
    """{module name: max |x| over every token, per input channel, [K] float32} for the modules
    `names` (default: every nn.Linear in `model`), from running `model` on each batch (see
    run_model) under torch.no_grad(). A module that never ran is missing from the result."""
    stats: dict[str, torch.Tensor] = {}

    def record(name, x):
        amax = x.abs().amax(dim=0).float()
        prev = stats.get(name)
        # NaN-propagating max: a NaN activation must show up, not be dropped.
        stats[name] = amax if prev is None else torch.where(amax.isnan() | (amax > prev), amax, prev)

    _each_input(model, batches, names, record, desc, progress)
    for name, amax in stats.items():
        if not bool(torch.isfinite(amax).all()):
            raise ValueError(f"calibration: the input of {name} contains NaN or inf")
    return stats
