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
        "--input",
        help="folder, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix (default: [batch].input)",
    )
    parser.add_argument(
        "--output", help="where the outputs go, in the input's layout (same URI forms; default: [batch].output)"
    )
    parser.add_argument(
        "--shard",
        help="INDEX/COUNT: score only this shard of the inputs (default: CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT)",
    )
    parser.add_argument(
        "--on",
        choices=["here", "aws"],
        default="here",
        help="aws: start the function's deployed Step Functions Distributed Map on the S3 prefix instead",
    )
    parser.add_argument("--state-machine", help="with --on aws: its ARN (default: the stack's BatchStateMachineArn)")
    parser.add_argument("--stack", help="with --on aws: the function's CloudFormation stack (default: Modelfn-NAME)")
    parser.add_argument("--batch-size", type=int, help="rows per session run (default: the function's max_batch_size)")
    parser.add_argument("--overwrite", action="store_true", help="score inputs whose output is already there again")
    parser.add_argument("--quiet", action="store_true", help="no progress line, only the final report")


def main(args: argparse.Namespace) -> int:
    from modelfn.batch import job, shards  # ONNX Runtime and the stores' SDKs load only when a job runs
    from modelfn.batch.scoring import Scorer
    from modelfn.batch.stores import open_store
    from modelfn.registry import Registry
    from modelfn.spec import not_built

    if args.batch_size is not None and args.batch_size < 1:
        raise BadRequest("--batch-size must be at least 1")
    functions_dir = Path(args.functions_dir) if args.functions_dir else None
    registry = Registry.from_dir(functions_dir, [args.name])
    places = registry.specs[args.name].batch
    given_input = args.input or (places.input if places else None)
    given_output = args.output or (places.output if places else None)
    if not given_input or not given_output:
        raise BadRequest("name --input and --output (or give the function a [batch] table with input and output)")
    if args.on == "aws":
        from modelfn.batch.aws import start

        print(start(registry.specs[args.name], given_input, given_output, args.state_machine, args.stack))
        return 0
    shard = shards.parse(args.shard) if args.shard else shards.from_env()
    source, target = open_store(given_input), open_store(given_output)
    if source.uri.rstrip("/") == target.uri.rstrip("/"):
        raise BadRequest("--output must differ from --input: outputs keep the inputs' names")
    hint = not_built(registry.specs[args.name])
    if hint:
        raise ModelUnavailable(f"{args.name} is {hint}")
    scorer = Scorer(registry.load(args.name), args.batch_size)
    part = f", shard {shard}" if shard else ""
    print(
        f"modelfn batch {args.name}: {source.uri} -> {target.uri} ({scorer.max_rows} rows per run{part})",
        file=sys.stderr,
    )
    select = (lambda tasks: shard.select(tasks, lambda t: t.entry.name)) if shard else None
    report = job.run(scorer, source, target, overwrite=args.overwrite, progress=not args.quiet, select=select)
    print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1
