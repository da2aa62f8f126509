"""TensorFlow Serving configuration and clients of the exported Hourglass detector.

- `serving.client`: `GrpcClient`, `RestClient`, `LocalClient` (Python API), `make_client`.
- `serving.cli`: `hourglass predict`.
- `models.config`, `batching_parameters.txt`, `docker-compose.yml`: TF Serving deployment files.

Imports only keras_hourglass's TensorFlow-free DICOM preprocessing (`keras_hourglass.data.dicom`),
never the model code. The REST path needs no TensorFlow; the gRPC path imports it through
tensorflow-serving-api's protos; the local path runs the SavedModel with TensorFlow.
"""
