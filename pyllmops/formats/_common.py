"""What the int4 formats share: one group size for a whole checkpoint, and collecting the layers
whose tensors carry a given suffix."""
from __future__ import annotations

from pyllmops.formats._layer import FormatError, QuantizedLinear
from pyllmops.quant.packing import Int4Weight


def config_group_size(w: Int4Weight) -> int:
    """The group size a checkpoint config states for this weight: -1 for one group per row."""
    return -1 if w.group_size >= w.shape[1] else w.group_size


def common_int4(fmt: str, layers: dict[str, QuantizedLinear]) -> tuple[int, int]:
    """(group_size, bits) shared by every layer: these formats state one of each for the whole
    checkpoint. Raises FormatError naming the first layer that is not int4 weight-only or that
    disagrees."""
    first = None
    for name, layer in layers.items():
        w = layer.weight
        if not isinstance(w, Int4Weight) or layer.act is not None:
            raise FormatError(f"{fmt}: {name} is {'W8A8' if layer.act else 'int8 weight-only'}; this format holds "
                              f"int4 weight-only layers (use format='compressed-tensors')")
        here = (config_group_size(w), w.bits)
        if first is None:
            first = (name, here)
        elif here != first[1]:
            raise FormatError(f"{fmt}: {name} has group_size/bits {here} but {first[0]} has {first[1]}; the "
                              f"format states one for the whole checkpoint")
    if first is None:
        raise FormatError(f"{fmt}: the model has no quantized linear layers to save")
    return first[1]


def layer_names(tensors: dict, suffix: str) -> list[str]:
    """Names of the layers that have a tensor `<name><suffix>`, in file order."""
    return [k[:-len(suffix)] for k in tensors if k.endswith(suffix)]
