"""One bulk job: list the inputs, skip those whose output is already complete, score the rest
in merged batches, publish each output whole, and report rows, failures and throughput."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from modelfn.batch.formats import SINKS, encoded, file_request, kind_of, output_name, read_rows
from modelfn.batch.scoring import WINDOW_BATCHES, Failure, Outcome, Request, Scorer
from modelfn.batch.stores import Entry, Store
from modelfn.events import reason

FAILURES_KEPT = 20


@dataclass(frozen=True)
class Task:
    entry: Entry
    kind: str
    output: str


@dataclass(frozen=True)
class Written:
    """One output published: its input, its name in the output store, its rows and failed rows."""

    input: str
    output: str
    rows: int
    failed_rows: int


@dataclass
class Report:
    files: int = 0
    skipped: list[str] = field(default_factory=list)  # output already complete
    ignored: list[str] = field(default_factory=list)  # not an input format
    failed_files: list[tuple[str, str]] = field(default_factory=list)
    rows: int = 0
    failed_rows: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (where, why) for the first failed rows
    seconds: float = 0.0
    runs: int = 0
    written: list[Written] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_rows and not self.failed_files

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.rows:,} row(s) in {self.files} file(s), {self.failed_rows:,} failed; "
            f"{self.seconds:.1f} s, {rate:,.0f} rows/s, {self.runs:,} session run(s)",
        ]
        if self.skipped:
            lines.append(f"{len(self.skipped)} file(s) skipped: their output is complete (--overwrite redoes them)")
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else "")
            formats = ".jsonl, .csv, .parquet, .json, .txt or an image"
            lines.append(f"{len(self.ignored)} file(s) not read (not {formats}): {shown}")
        for name, why in self.failed_files:
            lines.append(f"FAILED {name}: {why} (no output written; a rerun tries it again)")
        for where, why in self.examples:
            lines.append(f"row failed: {where}: {why}")
        if self.failed_rows > len(self.examples):
            lines.append(f"... and {self.failed_rows - len(self.examples):,} more: see the error field of the outputs")
        return "\n".join(lines)


class ProgressLine:
    """rows, rows/s, share of input bytes done and the ETA, on one line redrawn at most twice a second."""

    def __init__(self, total_bytes: int, stream: TextIO | None = None, every_s: float = 0.5) -> None:
        self.total = max(total_bytes, 1)
        self.stream = stream if stream is not None else sys.stderr
        # on a terminal the line is redrawn in place; into a log file, a line every 10 s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every_s if self.tty or every_s == 0 else max(every_s, 10.0)
        self.started = time.monotonic()
        self.shown = 0.0
        self.rows = self.failed = 0
        self.done_bytes = 0.0
        self.drawn = False

    def update(self, rows: int, failed: int, done_bytes: float, final: bool = False) -> None:
        self.rows, self.failed, self.done_bytes = rows, failed, done_bytes
        now = time.monotonic()
        if not final and now - self.shown < self.every:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-9)
        share = min(done_bytes / self.total, 1.0)
        eta = elapsed * (1 - share) / share if share > 0 else None
        failed_text = f" ({failed:,} failed)" if failed else ""
        eta_text = "done" if final else f"ETA {_clock(eta)}" if eta is not None else "ETA --"
        line = f"  {rows:,} rows{failed_text}  {rows / elapsed:,.0f} rows/s  {share:5.1%}  {eta_text}"
        self.stream.write(f"\r{line:<72}" + ("\n" if final else "") if self.tty else line + "\n")
        self.stream.flush()
        self.drawn = True


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def plan(
    source: Store, target: Store, overwrite: bool, report: Report, entries: list[Entry] | None = None
) -> list[Task]:
    """The inputs to score (`entries`, else the whole listing): formats we read, outside the
    output's place, without a complete output."""
    inside = _relative(target.uri, source.uri)
    tasks = []
    for entry in source.list() if entries is None else entries:
        if inside is not None and (entry.name + "/").startswith(inside):
            continue
        kind = kind_of(entry.name)
        if kind is None:
            report.ignored.append(entry.name)
            continue
        out = output_name(entry.name, kind)
        if not overwrite and target.exists(out):
            report.skipped.append(entry.name)
            continue
        tasks.append(Task(entry, kind, out))
    return tasks


def _relative(inner: str, outer: str) -> str | None:
    """The folder of `inner` below `outer` (`preds/`), '' when they are the same place, None when apart."""
    a, b = inner.rstrip("/") + "/", outer.rstrip("/") + "/"
    return a[len(b) :] if a.startswith(b) else None


def run(
    scorer: Scorer,
    source: Store,
    target: Store,
    *,
    overwrite: bool = False,
    progress: ProgressLine | bool | None = True,
    select: Callable[[list[Task]], list[Task]] | None = None,
    entries: list[Entry] | None = None,
) -> Report:
    """Score every input under `source` (or only `entries`, already listed) into `target`.
    `select` narrows the task list (a shard)."""
    started = time.monotonic()
    report = Report()
    tasks = plan(source, target, overwrite, report, entries)
    if select is not None:
        tasks = select(tasks)
    report.files = len(tasks)
    line = ProgressLine(sum(t.entry.size for t in tasks)) if progress is True else progress or None
    job = _Job(scorer, source, target, report, line)
    job.run(tasks)
    report.seconds = time.monotonic() - started
    report.runs = scorer.runs
    if line is not None:
        line.update(report.rows, report.failed_rows, line.total, final=True)
    return report


class _Job:
    def __init__(self, scorer: Scorer, source: Store, target: Store, report: Report, line: ProgressLine | None):
        self.scorer, self.source, self.target, self.report, self.line = scorer, source, target, report, line
        self.done_bytes = 0.0
        self.workdir = Path(tempfile.mkdtemp(prefix="modelfn-batch-"))

    def run(self, tasks: list[Task]) -> None:
        rows = [t for t in tasks if t.kind != "file"]
        files = [t for t in tasks if t.kind == "file"]
        # the next input downloads while this one is scored
        with ThreadPoolExecutor(1, thread_name_prefix="modelfn-batch-read") as reader:
            for task, data in _prefetched(reader, self.source, rows):
                self._rows_file(task, data)
            chunk = self.scorer.max_rows * WINDOW_BATCHES
            for start in range(0, len(files), chunk):
                self._single_files(reader, files[start : start + chunk])
        for leftover in self.workdir.iterdir():
            leftover.unlink()
        self.workdir.rmdir()

    def _count(self, outcome: Outcome, ok: bool, where: str) -> None:
        self.report.rows += 1
        if not ok:
            self.report.failed_rows += 1
            if len(self.report.examples) < FAILURES_KEPT:
                failure = outcome.failure or Failure("internal_error", "the answer could not be written")
                self.report.examples.append((where, failure.message))

    def _tick(self, extra_bytes: float = 0.0) -> None:
        if self.line is not None:
            self.line.update(self.report.rows, self.report.failed_rows, self.done_bytes + extra_bytes)

    def _rows_file(self, task: Task, data: bytes | BaseException) -> None:
        temp = self.workdir / "rows.out"
        try:
            if isinstance(data, BaseException):
                raise data
            rows = read_rows(task.kind, data, self.scorer.fn)
            before = (self.report.rows, self.report.failed_rows)
            with temp.open("wb") as out:
                sink = SINKS[task.kind](out)
                for index, outcome in enumerate(self.scorer.score(rows.requests), start=1):
                    self._count(outcome, sink.write(outcome), f"{task.entry.name} row {index}")
                    if index % 256 == 0:
                        self._tick(task.entry.size * index / max(rows.count, 1))
                sink.close()
            self.target.put_file(task.output, temp)
            done = (self.report.rows - before[0], self.report.failed_rows - before[1])
            self.report.written.append(Written(task.entry.name, task.output, *done))
        except Exception as exc:
            self.report.failed_files.append((task.entry.name, reason(exc)))
        finally:
            temp.unlink(missing_ok=True)
        self.done_bytes += task.entry.size
        self._tick()

    def _single_files(self, reader: ThreadPoolExecutor, tasks: list[Task]) -> None:
        read: list[tuple[Task, Request]] = []
        for task, data in _prefetched(reader, self.source, tasks):
            if isinstance(data, BaseException):  # unread is not answered: no output, so a rerun tries it again
                self.report.failed_files.append((task.entry.name, reason(data)))
                self.done_bytes += task.entry.size
                continue
            read.append((task, file_request(task.entry.name, data)))
        outcomes = self.scorer.score(request for _, request in read)
        for (task, _), outcome in zip(read, outcomes, strict=True):
            body, ok = encoded(outcome)
            temp = self.workdir / "file.out"
            try:
                temp.write_bytes(body)
                self.target.put_file(task.output, temp)
                self._count(outcome, ok, task.entry.name)
                self.report.written.append(Written(task.entry.name, task.output, 1, 0 if ok else 1))
            except Exception as exc:
                self.report.failed_files.append((task.entry.name, reason(exc)))
            finally:
                temp.unlink(missing_ok=True)
            self.done_bytes += task.entry.size
            self._tick()


def _prefetched(
    reader: ThreadPoolExecutor, source: Store, tasks: list[Task]
) -> Iterator[tuple[Task, bytes | BaseException]]:
    """Each task with its input's bytes (or why they could not be read), the next one read ahead."""

    def read(task: Task) -> bytes | BaseException:
        try:
            return source.read(task.entry.name)
        except Exception as exc:
            return exc

    ahead: Future[bytes | BaseException] | None = reader.submit(read, tasks[0]) if tasks else None
    for index, task in enumerate(tasks):
        assert ahead is not None
        data = ahead.result()
        ahead = reader.submit(read, tasks[index + 1]) if index + 1 < len(tasks) else None
        yield task, data
