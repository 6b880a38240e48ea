"""`modelfn optimize NAME`: a smaller or faster model written beside the original, kept only
when it passes the accuracy guard (`modelfn.deploy.guard`) and a step measurably pays here.

CPU functions: dynamic int8 quantisation of the weight MatMul/Gemm and embedding Gather
(`modelfn.deploy.quantize`), the graph optimised once offline at the *extended* level and
saved, and the ORT format. The extended level is portable: its fused operators are ONNX
Runtime contrib operators every CPU build has, on x86_64 and arm64 alike; the *all* level adds
layout transforms for the instruction set of the machine that saved it, so it is never saved.
GPU functions: fp16 weights with inputs and outputs kept in their original types.

When the candidate passes, `model.source` switches to it (`model.opt.onnx` or `.ort`) with a
comment naming the original, which stays in the folder (and out of every bundle: see
`modelfn.deploy.plan.function_bytes`); `model.sha256` follows when it is set."""

from __future__ import annotations

import dataclasses
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfn.codecs import Feeds
from modelfn.deploy.guard import Comparison, OptimizeError, compare, load_requests, run_all, sample_file
from modelfn.errors import ModelfnError
from modelfn.function import ModelFunction, Outputs
from modelfn.session import create_session
from modelfn.sources import sha256_of
from modelfn.spec import FunctionSpec

BATCH = 32
CPU_STEPS = ("int8", "graph", "ort")
GPU_STEPS = ("fp16",)
# A step pays when one figure improves past these margins and none gets worse past them;
# they are wider than the run-to-run noise of medians on a shared 2-core machine.
GAIN = {"size": 0.05, "load": 0.10, "latency": 0.10, "throughput": 0.10}
WORSE = {"size": 0.02, "load": 0.20, "latency": 0.15, "throughput": 0.15}
# ...and past these absolute amounts: 200 bytes or 50 µs either way change nothing anyone pays for
FLOOR = {"size": 64 * 1024, "load": 1e-3, "latency": 5e-6, "throughput": 5e-6 * BATCH}

Log = Callable[[str], None]


@dataclass
class Metrics:
    """Measured here: bytes on disk, session load, one request at batch 1, rows/s at batch 32."""

    size: int
    load_s: float
    latency_s: float
    throughput: float

    def row(self) -> list[str]:
        size = f"{self.size / 1e6:.1f} MB" if self.size >= 1e6 else f"{self.size / 1e3:.1f} kB"
        return [size, _duration(self.load_s), _duration(self.latency_s), f"{self.throughput:,.0f}/s"]


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


@dataclass
class Candidate:
    step: str
    name: str
    path: Path
    comparison: Comparison | None = None
    metrics: Metrics | None = None
    verdict: str = ""
    kept: bool = False
    skipped: str = ""


@dataclass
class Outcome:
    """What `optimize` did: every candidate tried, the original's and the result's figures."""

    function: str
    original: Path
    before: Metrics | None = None
    after: Metrics | None = None
    result: Candidate | None = None
    tried: list[Candidate] = field(default_factory=list)
    written: Path | None = None
    switched: bool = False
    notes: list[str] = field(default_factory=list)


class Workbench:
    """The function's requests and reference outputs, and the measurements every candidate gets."""

    def __init__(self, fn: ModelFunction, requests: list[Feeds], rounds: int = 5) -> None:
        self.fn = fn
        self.spec = fn.spec
        self.requests = requests
        self.rounds = rounds
        self.reference = run_all(fn.session, fn.output_names, requests)
        singles = [r for r in requests if _rows(r) == 1] or requests
        self.latency_requests = singles[:20]
        self.batch = _batch(singles, BATCH, self.spec.batching.pad_value)

    def check(self, path: Path) -> Comparison:
        session = create_session(path, self.spec.runtime)
        return compare(self.reference, self.outputs(session), self.spec.optimize)

    def outputs(self, session: Any) -> list[Outputs]:
        return run_all(session, self.fn.output_names, self.requests)

    def measure(self, *paths: Path) -> list[Metrics]:
        """Each figure a median of `rounds`, the models taking turns so drift hits them alike."""
        loads: list[list[float]] = [[] for _ in paths]
        singles: list[list[float]] = [[] for _ in paths]
        batches: list[list[float]] = [[] for _ in paths]
        sessions = [create_session(p, self.spec.runtime) for p in paths]
        for session in sessions:
            self._time_requests(session)
        for _ in range(self.rounds):
            for i, path in enumerate(paths):
                started = time.perf_counter()
                create_session(path, self.spec.runtime)
                loads[i].append(time.perf_counter() - started)
                singles[i].append(self._time_requests(sessions[i]))
                started = time.perf_counter()
                sessions[i].run(self.fn.output_names, self.batch)
                batches[i].append(time.perf_counter() - started)
        rows = _rows(self.batch)
        return [
            Metrics(p.stat().st_size, statistics.median(lo), statistics.median(si), rows / statistics.median(ba))
            for p, lo, si, ba in zip(paths, loads, singles, batches, strict=True)
        ]

    def _time_requests(self, session: Any) -> float:
        started = time.perf_counter()
        for feeds in self.latency_requests:
            session.run(self.fn.output_names, feeds)
        return (time.perf_counter() - started) / len(self.latency_requests)


def _rows(feeds: Feeds) -> int:
    first = next(iter(feeds.values()))
    return 1 if first.ndim == 0 else int(first.shape[0])


def _batch(requests: list[Feeds], size: int, pad_value: float | None) -> Feeds:
    """`size` sample requests merged as the micro-batcher merges them; one request repeated
    when they cannot be (unequal lengths and no pad value, or no batch axis)."""
    from modelfn.batching import merge

    picked = [requests[i % len(requests)] for i in range(size)]
    try:
        return merge(picked, pad_value)
    except ValueError:
        return merge([requests[0]] * size, None)


def verdict(before: Metrics, after: Metrics) -> tuple[list[str], list[str]]:
    """What got better and what got worse, past the margins."""
    better, worse = [], []
    pairs = {
        "size": (before.size, after.size),
        "load": (before.load_s, after.load_s),
        "latency": (before.latency_s, after.latency_s),
        "throughput": (BATCH / before.throughput, BATCH / after.throughput),
    }
    for name, (old, new) in pairs.items():
        change = new / old - 1 if old else 0.0
        shown = f"{name} {change:+.0%}" if name != "throughput" else f"throughput {old / new - 1:+.0%}"
        if abs(new - old) < FLOOR[name]:
            continue
        if change < -GAIN[name]:
            better.append(shown)
        elif change > WORSE[name]:
            worse.append(shown)
    return better, worse


def steps_for(spec: FunctionSpec, wanted: list[str] | None) -> list[str]:
    available = GPU_STEPS if spec.runtime.accelerator == "gpu" else CPU_STEPS
    if not wanted:
        return list(available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise OptimizeError(
            f"--steps {','.join(unknown)}: not a step for accelerator = {spec.runtime.accelerator!r} "
            f"(its steps: {', '.join(available)})"
        )
    return [s for s in available if s in wanted]


def optimize(
    spec: FunctionSpec,
    data: Path | None = None,
    steps: list[str] | None = None,
    dry_run: bool = False,
    require_gain: bool = True,
    explore: bool = False,
    rounds: int = 5,
    log: Log = print,
) -> Outcome:
    """Try each step on the best model so far; keep its first candidate that passes the guard
    and pays (`explore`: measure the step's other candidates too, for the report)."""
    from modelfn.deploy import quantize

    # a GPU function is checked here on the CPU when this machine has no CUDA
    tooling = dataclasses.replace(spec, runtime=dataclasses.replace(spec.runtime, gpu_fallback=True))
    fn = ModelFunction(tooling)
    on_gpu = fn.providers[0] == "CUDAExecutionProvider"
    original = fn.model_path
    outcome = Outcome(spec.name, original)
    if ".opt" in original.suffixes:
        raise OptimizeError(
            f"{spec.model.source} is already the output of modelfn optimize; set model.source back to the "
            "original (named in the comment above it) to optimise again"
        )
    samples = sample_file(spec, data)
    if samples is None:
        raise OptimizeError(
            f"no sample requests for {spec.name}: give --data FILE (one JSON payload per line, as clients send "
            f"them), or put them in {spec.folder / 'samples.jsonl'}"
        )
    bench = Workbench(fn, load_requests(fn, samples), rounds)
    log(f"{spec.name}: {len(bench.requests)} sample requests from {samples}")
    with tempfile.TemporaryDirectory(prefix="modelfn-optimize-") as scratch:
        work = Path(scratch)
        current, current_metrics = original, bench.measure(original)[0]
        outcome.before = current_metrics
        for step in steps_for(spec, steps):
            kept = None
            for candidate in quantize.candidates(step, current, work, bench, log):
                outcome.tried.append(candidate)
                if candidate.skipped:
                    candidate.verdict = f"skipped: {candidate.skipped}"
                    log(f"  {candidate.name}: {candidate.verdict}")
                    continue
                try:
                    candidate.comparison = bench.check(candidate.path)
                except ModelfnError as exc:
                    candidate.verdict = f"refused: it does not run here: {exc.message.splitlines()[0]}"
                    log(f"  {candidate.name}: {candidate.verdict}")
                    continue
                if not candidate.comparison.passed:
                    candidate.verdict = "refused: " + "; ".join(candidate.comparison.failures)
                    log(f"  {candidate.name}: {candidate.verdict}")
                    continue
                before, after = bench.measure(current, candidate.path)
                candidate.metrics = after
                better, worse = verdict(before, after)
                if step == "fp16" and not on_gpu:
                    # speed on the CPU says nothing of a GPU: only the size counts here
                    better, worse = [b for b in better if "size" in b], [w for w in worse if "size" in w]
                    outcome.notes.append("fp16 was checked on the CPU (no CUDA here): its size decided, not its speed")
                if kept is not None:
                    candidate.verdict = f"explored: {', '.join(better) or 'nothing better'}" + (
                        f"; worse: {', '.join(worse)}" if worse else ""
                    )
                    log(f"  {candidate.name}: {candidate.comparison.headline}; {candidate.verdict}")
                    continue
                if worse or (require_gain and not better):
                    candidate.verdict = f"no gain: {', '.join(better) or 'nothing better'}" + (
                        f"; worse: {', '.join(worse)}" if worse else ""
                    )
                    log(f"  {candidate.name}: passes ({candidate.comparison.headline}) but {candidate.verdict}")
                    continue
                candidate.verdict = f"kept: {', '.join(better) or 'passes the guard'}"
                log(f"  {candidate.name}: {candidate.comparison.headline}; {candidate.verdict}")
                kept = candidate
                if not explore:
                    break
            if kept is not None:
                kept.kept = True
                outcome.result, current = kept, kept.path
        if outcome.result is None:
            outcome.notes.append("nothing passed the guard and paid: the spec is left as it is")
            return outcome
        outcome.result.comparison = bench.check(current)
        # the figures printed: three times the rounds of a step's decision, for steadier medians
        bench.rounds = rounds * 3
        outcome.before, outcome.after = bench.measure(original, current)
        target = original.with_name(original.name.split(".")[0] + ".opt" + current.suffix)
        if dry_run:
            outcome.notes.append(f"--dry-run: {target.name} not written, function.toml unchanged")
            return outcome
        shutil.copyfile(current, target)
        outcome.written = target
    _switch(spec, outcome, target)
    return outcome


def _switch(spec: FunctionSpec, outcome: Outcome, target: Path) -> None:
    if "://" in spec.model.source:
        outcome.notes.append(
            f"model.source is remote ({spec.model.source}): upload {target} beside it and point model.source "
            "at the upload; function.toml is unchanged"
        )
        return
    steps = ", ".join(c.step for c in outcome.tried if c.kept)
    spec_file = spec.folder / "function.toml"
    text = spec_file.read_text(encoding="utf-8")
    relative = target.relative_to(spec.folder).as_posix() if target.is_relative_to(spec.folder) else str(target)
    changed = switch_source(text, relative, spec.model.source, steps)
    if changed is None:
        outcome.notes.append(f"could not find model.source in {spec_file}: set it to {relative!r} by hand")
        return
    if spec.model.sha256:
        changed = re.sub(r'(?m)^(\s*sha256\s*=\s*)"[0-9a-fA-F]{64}"', rf'\g<1>"{sha256_of(target)}"', changed, count=1)
    spec_file.write_text(changed, encoding="utf-8")
    outcome.switched = True


def switch_source(text: str, new_source: str, old_source: str, steps: str) -> str | None:
    """function.toml with `[model] source` pointing at the optimised file and a comment naming
    the original; None when the source line is not where a plain table keeps it."""
    model = re.search(r"(?ms)^\[model\]\s*$(.*?)(?=^\[|\Z)", text)
    if model is None:
        return None
    body = model.group(1)
    line = re.search(r'(?m)^(# modelfn optimize\b.*\n)?source\s*=\s*"[^"]*"[^\n]*$', body)
    if line is None:
        return None
    comment = f'# modelfn optimize ({steps}) from "{old_source}"; set source back to it to undo\n'
    replaced = body[: line.start()] + comment + f'source = "{new_source}"' + body[line.end() :]
    return text[: model.start(1)] + replaced + text[model.end(1) :]


def report(outcome: Outcome) -> str:
    """The candidates tried and the before/after table, as `modelfn optimize` prints them."""
    lines = [f"{outcome.function}: candidates tried"]
    for c in outcome.tried:
        figures = "  ".join(c.metrics.row()) if c.metrics else ""
        guard = c.comparison.headline if c.comparison else ""
        lines.append(f"  {c.step:6} {c.name:44} {guard:28} {figures}")
        lines.append(f"         {c.verdict}")
    if outcome.before is not None:
        head = ["", "size", "load", "latency b1", "batch 32"]
        rows = [["before", *outcome.before.row()]]
        if outcome.after is not None:
            rows.append(["after", *outcome.after.row()])
        lines.append("")
        lines.extend("  " + "  ".join(f"{cell:>12}" for cell in row) for row in [head, *rows])
    if outcome.result is not None and outcome.result.comparison is not None:
        lines.append("")
        lines.append(f"  accuracy on {outcome.result.comparison.requests} sample requests:")
        lines.extend(f"    {o.describe()}" for o in outcome.result.comparison.outputs)
    if outcome.written is not None:
        lines.append(f"  wrote {outcome.written}")
    if outcome.switched:
        lines.append(f"  function.toml: model.source = {outcome.written.name if outcome.written else ''}")
    lines.extend(f"  {note}" for note in outcome.notes)
    return "\n".join(lines)


def main(args: Any) -> int:
    """`modelfn optimize NAME`: 0 when a candidate was kept (or --dry-run found one), 1 when
    nothing passed the guard and paid, 2 when the function cannot be optimised."""
    from modelfn.spec import discover, load_spec

    found = discover(Path(args.functions_dir) if args.functions_dir else None)
    if args.name not in found:
        print(f"modelfn optimize: no function named {args.name!r} (found: {', '.join(found) or 'none'})")
        return 2
    outcome = optimize(
        load_spec(found[args.name]),
        data=Path(args.data) if args.data else None,
        steps=[s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None,
        dry_run=args.dry_run,
        require_gain=not args.no_gain_check,
        explore=args.explore,
    )
    print()
    print(report(outcome))
    return 0 if outcome.result is not None else 1
