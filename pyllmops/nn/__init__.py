"""pyllmops.nn: thin drop-in modules that hold (quantized) parameters and call the ops."""
from pyllmops.nn.sampler import Sampler
from pyllmops.nn.w8a8 import W8A8Linear
from pyllmops.nn.weight_only import WeightOnlyLinear, set_compute_dtype

__all__ = ["Sampler", "W8A8Linear", "WeightOnlyLinear", "set_compute_dtype"]
