"""modelfn: one ONNX model, served unchanged on AWS Lambda, Google Cloud, Azure Functions
and a local server."""

__version__ = "0.1.0"
