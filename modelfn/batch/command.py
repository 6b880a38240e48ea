"""`modelfn batch NAME --input URI --output URI`: the function loaded once, every input under
the input prefix scored, a progress line while it runs and a report at the end; exit 1 when
any row or file failed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelfn.errors import BadRequest, ModelUnavailable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the function that scores the inputs")
    parser.add_argument(
        "--input", required=True, help="folder, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
    )
    parser.add_argument("--output", required=True, help="where the outputs go, in the input's layout (same URI forms)")
    parser.add_argument("--batch-size", type=int, help="rows per session run (default: the function's max_batch_size)")
    parser.add_argument("--overwrite", action="store_true", help="score inputs whose output is already there again")
    parser.add_argument("--quiet", action="store_true", help="no progress line, only the final report")


def main(args: argparse.Namespace) -> int:
    from modelfn.batch import job  # ONNX Runtime and the stores' SDKs load only when a job runs
    from modelfn.batch.scoring import Scorer
    from modelfn.batch.stores import open_store
    from modelfn.registry import Registry
    from modelfn.spec import not_built

    if args.batch_size is not None and args.batch_size < 1:
        raise BadRequest("--batch-size must be at least 1")
    source, target = open_store(args.input), open_store(args.output)
    if source.uri.rstrip("/") == target.uri.rstrip("/"):
        raise BadRequest("--output must differ from --input: outputs keep the inputs' names")
    functions_dir = Path(args.functions_dir) if args.functions_dir else None
    registry = Registry.from_dir(functions_dir, [args.name])
    hint = not_built(registry.specs[args.name])
    if hint:
        raise ModelUnavailable(f"{args.name} is {hint}")
    scorer = Scorer(registry.load(args.name), args.batch_size)
    print(f"modelfn batch {args.name}: {source.uri} -> {target.uri} ({scorer.max_rows} rows per run)", file=sys.stderr)
    report = job.run(scorer, source, target, overwrite=args.overwrite, progress=not args.quiet)
    print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1
