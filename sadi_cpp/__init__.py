"""sadi-cpp: SADI activation steering for quantized GGUF models, inside llama.cpp's compute graph."""

__version__ = "0.1.0"  # first, so that modules imported below may read it

from sadi_cpp.errors import BadInputError, SadiError, SteeringError, UnsupportedModelError  # noqa: E402
from sadi_cpp.gate import Gate, GateResult  # noqa: E402
from sadi_cpp.llama.hook import Hook, attach, load  # noqa: E402
from sadi_cpp.llama.recording import Recording  # noqa: E402
from sadi_cpp.positions import DEFAULT_POLICY, POLICIES  # noqa: E402
from sadi_cpp.sites import SITES  # noqa: E402
from sadi_cpp.steering import Steering  # noqa: E402

__all__ = [
    "SITES",
    "POLICIES",
    "DEFAULT_POLICY",
    "Hook",
    "Recording",
    "Steering",
    "Gate",
    "GateResult",
    "attach",
    "load",
    "SadiError",
    "BadInputError",
    "SteeringError",
    "UnsupportedModelError",
    "__version__",
]
