"""Evaluation: marks from a model, the FROC callback, plots and reports.

Names are loaded lazily: `plots` and `report` need no TensorFlow, while
`predict_marks` and `FrocCallback` import Keras.
"""

import importlib

_LAZY = {
    "PredictedImage": "keras_hourglass.evaluation.predict",
    "predict_marks": "keras_hourglass.evaluation.predict",
    "MarkPredictor": "keras_hourglass.evaluation.predict",
    "FrocCallback": "keras_hourglass.evaluation.callback",
    "plot_froc": "keras_hourglass.evaluation.plots",
    "plot_froc_curves": "keras_hourglass.evaluation.plots",
    "plot_overlay": "keras_hourglass.evaluation.plots",
    "format_table": "keras_hourglass.evaluation.report",
    "format_markdown_table": "keras_hourglass.evaluation.report",
    "write_marks_csv": "keras_hourglass.evaluation.report",
    "write_findings_csv": "keras_hourglass.evaluation.report",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_hourglass.evaluation' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
