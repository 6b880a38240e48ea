"""Optional per-function code: `hooks.preprocess`, `hooks.postprocess` and `hooks.tokenize`
name `module:function` in the function's own folder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfn.errors import ModelUnavailable
from modelfn.extras import missing_extra
from modelfn.spec import FunctionSpec


def resolve_hook(spec: FunctionSpec, ref: str | None) -> Callable[..., Any] | None:
    if ref is None:
        return None
    module_name, attr = ref.split(":")
    path = spec.folder / Path(*module_name.split(".")).with_suffix(".py")
    if not path.is_file():
        raise ModelUnavailable(f"{spec.name}: hook module {path} not found")
    qualified = f"modelfn_functions.{spec.name.replace('-', '_')}.{module_name}"
    module = sys.modules.get(qualified)
    if module is None:
        import importlib.util  # 15 ms at import; only functions with hooks need it

        loader_spec = importlib.util.spec_from_file_location(qualified, path)
        assert loader_spec and loader_spec.loader
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[qualified] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[qualified]
            missing = missing_extra(exc, path.name) if isinstance(exc, ImportError) else None
            reason = missing.message if missing else str(exc)
            raise ModelUnavailable(f"{spec.name}: hook module {path.name} failed to import: {reason}") from exc
    hook = getattr(module, attr, None)
    if not callable(hook):
        raise ModelUnavailable(f"{spec.name}: {path.name} has no function {attr!r}")
    return hook  # type: ignore[no-any-return]
