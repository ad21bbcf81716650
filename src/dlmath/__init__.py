"""dlmath: the verified library behind the executable textbook of deep-learning mathematics.

Each module holds one field; a chapter imports what it needs::

    import dlmath
    from dlmath import lse, device

``import dlmath`` imports torch and nothing heavier: scipy, sympy and matplotlib are imported
lazily by the modules that use them (``dlmath.plotting`` is the only one that needs matplotlib).
"""

from . import device, lse
from .lse import logsumexp, softmax

__version__ = "0.1.0"

__all__ = ["device", "lse", "logsumexp", "softmax", "__version__"]
