"""TensorFlow Serving configuration and clients of the exported Hourglass detector.

- `serving.client`: `GrpcClient`, `RestClient`, `LocalClient` (Python API), `make_client`.
- `serving.contract`: the model contract (the `metadata` signature's JSON) and its reader.
- `serving.dicom_outputs`: DICOM SR (TID 1500) and GSPS of the marks (highdicom).
- `serving.tls`: TLS options (gRPC channel credentials, REST https context).
- `serving.model_config`: version labels in models.config (`hourglass export --label`).
- `serving.batching`: the batching parameters file (allowed batch sizes for the warmup).
- `serving.cli`: `hourglass predict`.
- `models.config`, `models.canary.config`, `batching_parameters.txt`, `docker-compose.yml`: TF Serving
  deployment files.

Imports only keras_hourglass's TensorFlow-free DICOM preprocessing (`keras_hourglass.data.dicom`),
never the model code. The REST path needs no TensorFlow; the gRPC path imports it through
tensorflow-serving-api's protos; the local path runs the SavedModel with TensorFlow.
"""
