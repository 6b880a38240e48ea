"""The bare baseline the Lambda adapter is measured against: import ONNX Runtime, load the
model, parse the HTTP API body, run, return. No toolkit, no validation, no logging.

Its session options match what modelfn uses for breast-cancer (one intra-op thread), so
the ratio measures the adapter and the core, not a thread-pool setting.
Handler string: `bench.bare_lambda.handler` (run from the repository root)."""

import base64
import json
import os

import numpy as np
import onnxruntime as ort

MODEL = os.environ.get(
    "BARE_MODEL",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "functions", "breast-cancer", "model.onnx"),
)

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
session = ort.InferenceSession(MODEL, sess_options=_options, providers=["CPUExecutionProvider"])


def handler(event, context):
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body)
    features = np.asarray(json.loads(body)["X"], dtype=np.float32).reshape(1, -1)
    label, probabilities = session.run(None, {"X": features})
    result = {"label": int(label[0]), "probabilities": probabilities[0].tolist()}
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(result)}
