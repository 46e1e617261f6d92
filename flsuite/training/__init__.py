"""The plain (non-private) local training loop and the evaluation of a model on records."""

from flsuite.lazy import lazy_exports

_EXPORTS = {"TrainResult": "local", "evaluate": "local", "make_optimizer": "local", "train_plain": "local"}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
