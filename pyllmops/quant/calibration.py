"""Calibration statistics: what the inputs of a model's linear layers look like on sample data.

    input_absmax(model, batches, names) -> {name: absmax [K] float32}

records, for every named nn.Module (by default every nn.Linear), the per-input-channel maximum
of |x| over all tokens of all batches, through forward pre-hooks. SmoothQuant derives its
smoothing factors from it, and static per-tensor activation scales are its maximum / 127.
"""
from __future__ import annotations

from typing import Any, Iterable

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


def input_absmax(model: nn.Module, batches: Iterable[Any], names: Iterable[str] | None = None, *,
                 desc: str = "calibrating", progress: bool = True) -> dict[str, torch.Tensor]:
    """{module name: max |x| over every token, per input channel, [K] float32} for the modules
    `names` (default: every nn.Linear in `model`), from running `model` on each batch (see
    run_model) under torch.no_grad(). A module that never ran is missing from the result."""
    modules = dict(model.named_modules())
    wanted = [n for n, m in modules.items() if isinstance(m, nn.Linear)] if names is None else list(names)
    missing = [n for n in wanted if n not in modules]
    if missing:
        raise ValueError(f"names: no such modules in the model: {missing[:5]}")
    stats: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, args, kwargs):
            x = (args[0] if args else next(iter(kwargs.values()))).detach()
            amax = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            prev = stats.get(name)
            # NaN-propagating max: a NaN activation must show up, not be dropped.
            stats[name] = amax if prev is None else torch.where(amax.isnan() | (amax > prev), amax, prev)
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n), with_kwargs=True) for n in wanted]
    try:
        total = len(batches) if hasattr(batches, "__len__") else None
        with torch.no_grad():
            for batch in tqdm(batches, desc=desc, total=total, disable=not progress, leave=False):
                run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    for name, amax in stats.items():
        if not bool(torch.isfinite(amax).all()):
            raise ValueError(f"calibration: the input of {name} contains NaN or inf")
    return stats
