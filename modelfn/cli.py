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

from modelfn.errors import ModelfnError

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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from handlers.cloud_run import create_app
    from modelfn.registry import Registry

    registry = Registry.from_dir(_functions_dir(args), args.names or None, progress=_progress())
    app = create_app(registry, max_body_mb=args.max_body_mb)
    base = f"http://{args.host}:{args.port}"
    print(f"modelfn serving {len(registry.specs)} function(s) on {base}  (docs: {base}/docs)", file=sys.stderr)
    for name in registry.specs:
        print(f"  POST {base}/functions/{name}    POST {base}/v2/models/{name}/infer", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _read_json_arg(value: str) -> Any:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    return json.loads(text)


def cmd_invoke(args: argparse.Namespace) -> int:
    if args.event:
        import importlib

        module = importlib.import_module(
            {"aws": "handlers.aws_lambda", "gcp": "handlers.gcp_functions", "azure": "handlers.azure_functions"}[
                args.provider
            ]
        )
        if args.functions_dir:
            os.environ["MODELFN_FUNCTIONS_DIR"] = args.functions_dir
        result = module.local_invoke(args.name, _read_json_arg("@" + args.event))
    else:
        from modelfn.registry import Registry

        if args.data is None:
            raise SystemExit("modelfn invoke: give --data JSON (or @file) or --event FILE")
        fn = Registry.from_dir(_functions_dir(args), [args.name], progress=_progress()).load(args.name)
        result = fn.predict(payload=_read_json_arg(args.data))
    print(json.dumps(result, indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from modelfn.spec import discover, load_spec

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
        print(f"{name:24} {spec.io.codec:8} {spec.runtime.accelerator:4} {spec.model.source:40} {','.join(triggers)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from modelfn.function import ModelFunction
    from modelfn.spec import discover, load_spec

    found = discover(_functions_dir(args))
    names = args.names or list(found)
    problems = 0
    for name in names:
        if name not in found:
            print(f"FAIL {name}: no functions/{name}/function.toml")
            problems += 1
            continue
        try:
            fn = ModelFunction(load_spec(found[name]), progress=_progress())
        except ModelfnError as exc:
            print(f"FAIL {name}: {exc.message}")
            problems += 1
            continue
        print(f"ok   {name}  ({fn.load_seconds * 1000:.0f} ms, {fn.providers[0]}, batchable={fn.batchable})")
        for kind, tensors in (("in ", fn.inputs), ("out", fn.outputs)):
            for t in tensors:
                d = t.describe()
                print(f"       {kind} {d['name']:20} {d['datatype']:6} {d['shape']}")
    print(f"{len(names) - problems} of {len(names)} function(s) ok")
    return 1 if problems else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from modelfn.deploy import plan

    return plan.main(args)


def cmd_optimize(args: argparse.Namespace) -> int:
    from modelfn.deploy import optimize

    return optimize.main(args)


def cmd_layer(args: argparse.Namespace) -> int:
    from modelfn.deploy.layer import build_layer

    report = build_layer(args.python, args.arch, Path(args.out), force=args.force)
    print(report.summary())
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="modelfn", description="Serve ONNX models as serverless functions.")
    root.add_argument(
        "--functions-dir", help="folder of function folders (default: $MODELFN_FUNCTIONS_DIR or ./functions)"
    )
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve functions over HTTP locally (the Cloud Run app)")
    serve.add_argument("names", nargs="*", help="functions to serve (default: all)")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.add_argument("--max-body-mb", type=float, default=None, help="largest accepted request body")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=cmd_serve)

    invoke = sub.add_parser("invoke", help="run one prediction in-process, or a provider handler on an event file")
    invoke.add_argument("name")
    invoke.add_argument("--data", help="JSON payload, or @file")
    invoke.add_argument("--event", help="event file to pass to the provider's handler (e.g. events/aws/sqs.json)")
    invoke.add_argument("--provider", choices=PROVIDERS, default="aws")
    invoke.set_defaults(run=cmd_invoke)

    sub.add_parser("list", help="list the functions found").set_defaults(run=cmd_list)

    check = sub.add_parser("check", help="validate specs, load models, print signatures")
    check.add_argument("names", nargs="*")
    check.set_defaults(run=cmd_check)

    plan = sub.add_parser("plan", help="where each function lands on each provider, and why")
    plan.add_argument("names", nargs="*")
    plan.add_argument("--provider", choices=PROVIDERS)
    plan.add_argument("--out", help="write the deployable configuration here")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=cmd_plan)

    optimize = sub.add_parser(
        "optimize", help="a smaller, faster model, switched to only when it passes the accuracy guard"
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


if __name__ == "__main__":
    sys.exit(main())
