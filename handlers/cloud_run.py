"""Cloud Run: the entry point the container runs (`uvicorn handlers.cloud_run:app`, or
`modelfn serve`), over the core's ASGI server. It translates nothing: Cloud Run speaks HTTP."""

from __future__ import annotations

from typing import Any

from modelfn.asgi import create_app


def __getattr__(name: str) -> Any:
    """`handlers.cloud_run:app`: built on first access from $MODELFN_FUNCTIONS_DIR."""
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
