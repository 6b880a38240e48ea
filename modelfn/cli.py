"""`modelfn`: serve, invoke, list and check functions; plan deployments; build layers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelfn.errors import BadRequest, ModelfnError, ModelUnavailable
from modelfn.extras import missing_extra

PROVIDERS = ("aws", "gcp", "azure")


def _progress() -> Any:
    last = [-1]

    def report(done: int, total: int | None) -> None:
        mb = done / 1e6
        step = int(mb // 5)
        if (total and done == total) or step != last[0]:
            last[0] = step
            of = f" of {total / 1e6:.1f}" if total else ""
            print(
                f"\r  downloading model: {mb:.1f}{of} MB", end="\n" if total and done >= total else "", file=sys.stderr
            )

    return report


def _functions_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.functions_dir) if args.functions_dir else None


def _app(functions_dir: Path | None, names: list[str] | None, max_body_mb: float | None, base: str) -> Any:
    """The app `modelfn serve` runs; what it serves is listed on stderr."""
    from modelfn.asgi import create_app
    from modelfn.registry import Registry
    from modelfn.spec import not_built

    registry = Registry.from_dir(functions_dir, names, progress=_progress())
    app = create_app(registry, max_body_mb=max_body_mb)
    print(f"modelfn serving {len(registry.specs)} function(s) on {base}  (docs: {base}/docs)", file=sys.stderr)
    for name, spec in registry.specs.items():
        print(f"  POST {base}/functions/{name}    POST {base}/v2/models/{name}/infer", file=sys.stderr)
        hint = not_built(spec)
        if hint:
            print(f"    {name} is {hint}; until then it answers 503", file=sys.stderr)
    return app


def reloading_app() -> Any:
    """`serve --reload` and `serve --workers N`: uvicorn imports this factory in every server
    process it starts, so what to serve comes through the environment that `cmd_serve` set."""
    names = [n for n in os.environ.get("MODELFN_SERVE_NAMES", "").split(",") if n]
    return _app(None, names or None, None, os.environ.get("MODELFN_SERVE_URL", ""))


def _default_workers(functions_dir: Path | None, names: list[str] | None) -> int:
    """$MODELFN_WORKERS, else one process; where a GPU function is served, one per CPU up to
    four: one Python process cannot hand a GPU work fast enough."""
    configured = os.environ.get("MODELFN_WORKERS")
    if configured:
        return max(1, int(configured))
    from modelfn.registry import Registry

    specs = Registry.from_dir(functions_dir, names).specs.values()
    if any(spec.runtime.accelerator == "gpu" for spec in specs):
        return max(1, min(4, os.cpu_count() or 1))
    return 1


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    base = f"http://{args.host}:{args.port}"
    workers = args.workers or _default_workers(_functions_dir(args), args.names or None)
    if not args.reload and workers == 1:
        app = _app(_functions_dir(args), args.names or None, args.max_body_mb, base)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
        return 0

    import modelfn
    from modelfn.registry import Registry
    from modelfn.spec import functions_dir

    folder = (_functions_dir(args) or functions_dir()).resolve()
    Registry.from_dir(folder, args.names or None)  # unknown names fail here, once, not in every process
    os.environ.update(
        {"MODELFN_FUNCTIONS_DIR": str(folder), "MODELFN_SERVE_NAMES": ",".join(args.names), "MODELFN_SERVE_URL": base}
    )
    if args.max_body_mb:
        os.environ["MODELFN_MAX_BODY_MB"] = str(args.max_body_mb)
    options: dict[str, Any] = {"workers": workers}
    if args.reload:
        package = Path(modelfn.__file__).resolve().parent
        code = [str(package), str(package.parent / "handlers")]  # the adapters, watched as files: never imported
        options = {
            "reload": True,
            "reload_dirs": [str(folder), *code],
            "reload_includes": ["*.py", "*.toml", "*.onnx", "*.json"],
        }
    else:
        # several processes on one port (the kernel spreads connections): each has its own
        # session and micro-batcher, so one GPU is fed by as many Python processes
        print(f"modelfn: {workers} server processes", file=sys.stderr)
    uvicorn.run(
        "modelfn.cli:reloading_app", factory=True, host=args.host, port=args.port, log_level=args.log_level, **options
    )
    return 0


def _json_text(text: str, what: str, hint: str = "") -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{what} is not JSON ({exc}){hint}") from None


def _json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadRequest(f"{what}: no such file {path}") from None
    except (OSError, ValueError) as exc:
        raise BadRequest(f"{what}: cannot read {path}: {exc}") from None
    return _json_text(text, f"{what} {path}")


def _data_arg(value: str) -> Any:
    """`--data JSON` or `--data @FILE`."""
    if value.startswith("@"):
        return _json_file(value[1:], "--data")
    return _json_text(value, "--data", ": give a JSON document, or @FILE to read one from a file")


def _local_invoke(provider: str, name: str, event: Any) -> Any:
    """Run one provider's handler on an event in this process (`invoke --event`)."""
    import importlib

    adapters = {"aws": "handlers.local.aws", "gcp": "handlers.local.gcp", "azure": "handlers.local.azure"}
    return importlib.import_module(adapters[provider]).local_invoke(name, event)


def cmd_invoke(args: argparse.Namespace) -> int:
    if args.version:
        _pin_version(args)
    if args.event:
        event = _json_file(args.event, "--event")
        if args.functions_dir:
            os.environ["MODELFN_FUNCTIONS_DIR"] = args.functions_dir
        result = _local_invoke(args.provider or "aws", args.name, event)
    else:
        from modelfn.registry import Registry
        from modelfn.spec import not_built

        if args.provider:
            raise BadRequest("--provider goes with --event; --data runs the function in-process on no provider")
        payload = _data_arg(args.data)
        registry = Registry.from_dir(_functions_dir(args), [args.name], progress=_progress())
        hint = not_built(registry.specs[args.name])
        if hint:
            raise ModelUnavailable(f"{args.name} is {hint}")
        fn = registry.traffic(args.name).choose() if args.version else registry.load(args.name)
        result = fn.predict(payload=payload)
    print(json.dumps(result, indent=2))
    return 0


def _pin_version(args: argparse.Namespace) -> None:
    """`--version V`: that version answers (HTTP events, every trigger, --data), with no split
    and no shadow copy, as a request to its `/versions/V` route would be."""
    from modelfn import traffic
    from modelfn.spec import discover, load_spec

    found = discover(_functions_dir(args))
    if args.name in found:
        versions = load_spec(found[args.name]).model.version_names
        if args.version not in versions:
            raise BadRequest(f"--version {args.version}: {args.name} has the versions {versions}")
    traffic.PINNED[args.name] = args.version


def cmd_list(args: argparse.Namespace) -> int:
    from modelfn.spec import discover, load_spec, not_built

    for name, path in discover(_functions_dir(args)).items():
        try:
            spec = load_spec(path)
        except ModelfnError as exc:
            print(f"{name:24} INVALID: {exc.message.splitlines()[0]}")
            continue
        triggers = [
            t
            for t in ("http", "s3", "sqs", "sns", "eventbridge", "pubsub", "gcs", "blob", "queue")
            if getattr(spec.triggers, t)
        ]
        line = f"{name:24} {spec.io.codec:8} {spec.runtime.accelerator:4} {spec.model.source:40} {','.join(triggers)}"
        hint = not_built(spec)
        print(f"{line}  ({hint})" if hint else line)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 1 on a real problem; a model not built yet is a SKIP line, so a fresh clone passes."""
    from modelfn.function import ModelFunction
    from modelfn.spec import discover, load_spec, not_built

    found = discover(_functions_dir(args))
    names = args.names or list(found)
    problems = skipped = 0
    for name in names:
        if name not in found:
            print(f"FAIL {name}: no functions/{name}/function.toml")
            problems += 1
            continue
        try:
            spec = load_spec(found[name])
            hint = not_built(spec)
            if hint:
                print(f"SKIP {name}: {hint}")
                skipped += 1
                continue
            fn = ModelFunction(spec, progress=_progress())
        except ModelfnError as exc:
            print(f"FAIL {name}: {exc.message}")
            problems += 1
            continue
        print(f"ok   {name}  ({fn.load_seconds * 1000:.0f} ms, {fn.providers[0]}, batchable={fn.batchable})")
        for kind, tensors in (("in ", fn.inputs), ("out", fn.outputs)):
            for t in tensors:
                d = t.describe()
                print(f"       {kind} {d['name']:20} {d['datatype']:6} {d['shape']}")
    unbuilt = f", {skipped} not built yet" if skipped else ""
    print(f"{len(names) - problems - skipped} of {len(names)} function(s) ok{unbuilt}")
    return 1 if problems else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from modelfn.deploy import plan

    return plan.main(args)


def cmd_optimize(args: argparse.Namespace) -> int:
    from modelfn.deploy import optimize

    return optimize.main(args)


def cmd_batch(args: argparse.Namespace) -> int:
    from modelfn.batch import command

    return command.main(args)


def cmd_profile(args: argparse.Namespace) -> int:
    from modelfn.deploy import profile
    from modelfn.registry import Registry

    fn = Registry.from_dir(_functions_dir(args), [args.name], progress=_progress()).load(args.name)
    profile.main(fn, Path(args.data), Path(args.out) if args.out else None)
    return 0


def cmd_layer(args: argparse.Namespace) -> int:
    from modelfn.deploy.layer import build_layer

    report = build_layer(args.python, args.arch, Path(args.out), force=args.force)
    print(report.summary())
    return 0


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    from modelfn.batch.command import add_arguments

    add_arguments(parser)


def parser() -> argparse.ArgumentParser:
    functions_help = "folder of function folders (default: $MODELFN_FUNCTIONS_DIR or ./functions)"
    root = argparse.ArgumentParser(prog="modelfn", description="Serve ONNX models as serverless functions.")
    root.add_argument("--functions-dir", help=functions_help)
    # the same option after the subcommand; SUPPRESS keeps a value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--functions-dir", default=argparse.SUPPRESS, help=functions_help)
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="serve functions over HTTP locally (the Cloud Run app)")
    serve.add_argument("names", nargs="*", help="functions to serve (default: all)")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.add_argument("--max-body-mb", type=float, default=None, help="largest accepted request body")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--reload", action="store_true", help="restart on changes to the functions and the code")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes on the port (default: $MODELFN_WORKERS, else 1; up to 4 where a GPU function is served)",
    )
    serve.set_defaults(run=cmd_serve)

    invoke = sub.add_parser(
        "invoke", parents=[common], help="run one prediction in-process, or a provider handler on an event file"
    )
    invoke.add_argument("name")
    given = invoke.add_mutually_exclusive_group(required=True)
    given.add_argument("--data", help="JSON payload, or @file")
    given.add_argument("--event", help="event file to pass to the provider's handler (e.g. events/aws/sqs.json)")
    invoke.add_argument("--provider", choices=PROVIDERS, help="with --event: whose handler runs it (default: aws)")
    invoke.add_argument(
        "--version", help="the model version that answers (default: --event follows [traffic], --data runs [model])"
    )
    invoke.set_defaults(run=cmd_invoke)

    sub.add_parser("list", parents=[common], help="list the functions found").set_defaults(run=cmd_list)

    check = sub.add_parser("check", parents=[common], help="validate specs, load models, print signatures")
    check.add_argument("names", nargs="*")
    check.set_defaults(run=cmd_check)

    plan = sub.add_parser("plan", parents=[common], help="where each function lands on each provider, and why")
    plan.add_argument("names", nargs="*")
    plan.add_argument("--provider", choices=PROVIDERS)
    plan.add_argument("--out", help="write the deployable configuration here")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=cmd_plan)

    optimize = sub.add_parser(
        "optimize", parents=[common], help="a smaller, faster model, switched to only when it passes the accuracy guard"
    )
    optimize.add_argument("name")
    optimize.add_argument("--data", help="sample requests, one JSON payload per line (default: samples.jsonl)")
    optimize.add_argument("--steps", help="comma-separated: int8,graph,ort (CPU) or fp16 (GPU); default: all")
    optimize.add_argument("--dry-run", action="store_true", help="report only: write nothing, leave the spec")
    optimize.add_argument("--explore", action="store_true", help="measure every candidate, not only up to the kept one")
    optimize.add_argument(
        "--no-gain-check",
        action="store_true",
        help="keep a step that passes the guard even if no faster or smaller here",
    )
    optimize.set_defaults(run=cmd_optimize)

    profile = sub.add_parser(
        "profile", parents=[common], help="write profile.json: the reference drift is measured against"
    )
    profile.add_argument("name")
    profile.add_argument("--data", required=True, help="requests: JSON Lines, CSV with a header, or an event file")
    profile.add_argument("--out", help="where to write it (default: [drift].profile beside function.toml)")
    profile.set_defaults(run=cmd_profile)

    batch = sub.add_parser(
        "batch", parents=[common], help="score every row and file under a folder or bucket prefix (bulk predictions)"
    )
    _add_batch_arguments(batch)
    batch.set_defaults(run=cmd_batch)

    layer = sub.add_parser("layer", help="Lambda layer tools").add_subparsers(dest="layer_command", required=True)
    build = layer.add_parser("build", help="build the slim ONNX Runtime + NumPy layer")
    build.add_argument("--python", default="3.12", choices=("3.12", "3.13"))
    build.add_argument("--arch", default="x86_64", choices=("x86_64", "arm64"))
    build.add_argument("--out", default="build/layers")
    build.add_argument("--force", action="store_true")
    build.set_defaults(run=cmd_layer)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ModelfnError as exc:
        print(f"modelfn: {exc.message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        print(f"modelfn {args.command}: {missing.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
