"""SavedModel export of the Hourglass detector for TensorFlow Serving.

Public API (TensorFlow is imported on first use of a submodule):

- `export.saved_model.export_keras_model(model_path, base_path, ...)`: `hourglass export`.
- `export.saved_model.export_detector(detector, base_path, ...)`: export an in-memory model.
- `export.signatures.HourglassDetector`, `build_export_archive`: the signatures serving_default,
  detect_png and metadata (the model contract, format in `serving.contract`).
- `export.contract`: operating points (from froc.json) and lineage for the contract.
- `export.two_stage`: `TwoStageDetector`, both stages in one SavedModel (`hourglass export --classifier`).
- `export.verify.verify_saved_model(path, ...)`: servability checks; `export.verify_two_stage`: a
  combined export's scores against the Python two-stage pipeline.
- `export.warmup.build_warmup_requests`, `write_warmup_requests`, `read_warmup_requests`: records at the
  served shapes and batch sizes.
"""
