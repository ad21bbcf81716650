"""Optimizers (``torch.optim.Optimizer`` subclasses, one file each) and optimizer helpers.

Names are imported lazily from their modules, so ``import dlmath.optim`` stays cheap and each
optimizer file can be read on its own.
"""

from importlib import import_module

# public name -> module of dlmath.optim that defines it
_EXPORTS = {
    "global_grad_norm": "clipping",
    "clip_coefficient": "clipping",
    "clip_by_global_norm": "clipping",
    "clip_grad_norm_": "clipping",
    "first_order_change": "clipping",
    "sign_cosine": "clipping",
    "decrease_clipped_lr": "clipping",
    "Lion": "lion",
    "lion_update": "lion",
    "Tiger": "tiger",
    "tiger_update": "tiger",
    "tiger_lr": "tiger",
    "fraction_unchanged": "tiger",
    "SignSGD": "sign",
    "signum_update": "sign",
    "amos_sign_hparams": "sign",
    "sign_decay_fixed_point": "sign",
    "sign_decay_closed_form": "sign",
    "spectral_decay_": "spectral",
    "Muon": "muon",
    "FUSED_MIN_NUMEL": "_fused",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dlmath.optim' has no attribute {name!r}")


def __dir__():
    return __all__
