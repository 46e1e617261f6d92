"""The networks sites train (all Opacus-compatible) and their weights as Flower ArrayRecords."""

from flsuite.lazy import lazy_exports

_EXPORTS = {
    "ModelLayout": "weights",
    "array_of": "array_codec",
    "array_values": "array_codec",
    "record_of": "array_codec",
    "decoded": "weights",
    "load_arrays": "weights",
    "model_to_arrays": "weights",
    "build_model": "zoo",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
