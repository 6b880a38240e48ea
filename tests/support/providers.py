"""What several test modules need to reach a provider in-process, written once: the API
Gateway HTTP API (payload 2.0) event and the Azure Functions HTTP request the platforms would
hand the handler, and a copy of an example function with settings added to its `function.toml`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def lambda_http_event(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event on the `$default` stage, JSON by default."""
    return {
        "version": "2.0",
        "rawPath": path,
        "headers": {"content-type": "application/json", **(headers or {})},
        "requestContext": {"http": {"method": method}, "stage": "$default"},
        "body": body.decode(),
        "isBase64Encoded": False,
    }


def azure_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    """`azure.functions.HttpRequest` for `path` on the catch-all route (`{*path}`), JSON by default."""
    import azure.functions as func

    return func.HttpRequest(
        method,
        f"https://modelfn.azurewebsites.net/{path.lstrip('/')}",
        headers={"content-type": "application/json", **(headers or {})},
        route_params={"path": path.lstrip("/")},
        body=body,
    )


def example_copy(root: Path, name: str = "breast-cancer", extra_toml: str = "") -> Path:
    """functions/<name>'s model and spec copied under `root`, with `extra_toml` appended."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "functions" / name / "model.onnx", folder)
    spec = (ROOT / "functions" / name / "function.toml").read_text()
    (folder / "function.toml").write_text(spec + ("\n" + extra_toml if extra_toml else ""))
    return folder
