"""Finding and swapping the nn.Linear layers of any model."""
from __future__ import annotations

from typing import Callable, Iterator

from torch import nn


def linear_layers(model: nn.Module, include: Callable[[str, nn.Linear], bool] | None = None) -> Iterator[tuple[str, nn.Linear]]:
    """(qualified name, layer) for each nn.Linear in `model`, in registration order; `include`
    filters (e.g. to skip an LM head)."""
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and (include is None or include(name, mod)):
            yield name, mod


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted path `name` to `new`."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
