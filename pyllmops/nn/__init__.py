"""pyllmops.nn: thin modules that hold parameters and call the ops."""
from pyllmops.nn.sampler import Sampler

__all__ = ["Sampler"]
