"""sadi-cpp: SADI activation steering for quantized GGUF models, inside llama.cpp's compute graph."""

from sadi_cpp.errors import BadInputError, SadiError, SteeringError, UnsupportedModelError
from sadi_cpp.hook import SITES, Hook, Recording, attach, load
from sadi_cpp.positions import DEFAULT_POLICY, POLICIES

__version__ = "0.1.0"

__all__ = [
    "SITES",
    "POLICIES",
    "DEFAULT_POLICY",
    "Hook",
    "Recording",
    "attach",
    "load",
    "SadiError",
    "BadInputError",
    "SteeringError",
    "UnsupportedModelError",
    "__version__",
]
