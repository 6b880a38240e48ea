"""The pieces of the Azure Functions adapter (named `az`, as Azure's CLI is: a folder named
`azure` would shadow the `azure` namespace package wherever `handlers/` is on the path):
the served function, and one module per
trigger (HTTP, Blob, Queue) that registers it on the app and translates the host's types to
and from the core's. The entry point is `handlers.azure_functions.build_app`.

No `from __future__ import annotations` in the trigger modules: the Python worker reads the
annotations of the registered functions to pick its converters (`func.InputStream`,
`func.Out[str]`), and real objects are simpler for it than strings to resolve."""
