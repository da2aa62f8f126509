"""keras-hourglass: a hypersensitive stacked-Hourglass lesion detector.

The public names are loaded lazily so that TensorFlow-free submodules
(`keras_hourglass.data.dicom`, used by ingest workers and the serving
client) can be imported without importing TensorFlow.
"""

import importlib

from keras_hourglass.version import __version__

_LAZY = {
    "build_hourglass": "keras_hourglass.model.hourglass",
    "inference_model": "keras_hourglass.model.hourglass",
    "HypersensitiveLoss": "keras_hourglass.losses.hypersensitive",
    "GaussianL2Loss": "keras_hourglass.losses.gaussian_l2",
    "PenaltyReducedFocalLoss": "keras_hourglass.losses.focal",
    "breast_mask": "keras_hourglass.breast",
    "find_peaks": "keras_hourglass.peaks",
    "froc": "keras_hourglass.evaluation.froc",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_hourglass' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
