"""Structured JSON logs and CloudWatch EMF metrics for the Lambda adapter, written as plain
JSON lines.

Powertools' Logger and Metrics would cost about 60-110 ms of imports before the first
request (measured with `python -X importtime`, see the README's AWS Lambda section), which alone breaks
the cold-start budget of 1.3x a bare ONNX Runtime script. This module writes the same keys
Powertools' Logger does (level, location, message, timestamp, service, cold_start,
function_name, function_request_id, xray_trace_id...) and the same Embedded Metric Format
document, so log queries and dashboards work as they would with Powertools."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, TextIO

METRIC_UNITS = {"Count", "Milliseconds", "Seconds", "Bytes", "Megabytes", "Percent", "None"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
"""One encoder for every line: `json.dumps` with options builds a new one per call."""
_quote = json.encoder.encode_basestring


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: no descriptor
        return None


_isfinite = math.isfinite


class _Series(list):  # type: ignore[type-arg]
    """Several values of one metric in one invocation, each as `metric` keeps it: `%s` writes
    them as a JSON array."""

    __slots__ = ()

    def __str__(self) -> str:
        return "[" + ",".join(map(str, self)) + "]"


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class Telemetry:
    """Log lines and one EMF document per invocation, tagged with the invocation's context."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.service = os.environ.get("POWERTOOLS_SERVICE_NAME") or "modelfn"
        self.namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "modelfn"
        level = os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("AWS_LAMBDA_LOG_LEVEL") or "INFO"
        self.level = (
            logging.getLevelName(level.upper()) if level.upper() in logging.getLevelNamesMapping() else logging.INFO
        )
        self.metrics_enabled = not _flag("POWERTOOLS_METRICS_DISABLED")
        self._stream = stream
        self.on_lambda = "AWS_LAMBDA_FUNCTION_NAME" in os.environ
        self.cold_start = True
        self.context: Any = None
        self.trigger: str | None = None
        self.function: str | None = None
        self.invocation_cold = False
        self._fields: dict[str, Any] | None = {}
        self.dimensions: dict[str, str] = {"service": self.service}
        self.metrics: dict[str, Any] = {}
        """This invocation's values by metric name, each as `%s` writes its JSON (see `metric`):
        one value, or a `_Series` of them when recorded more than once."""
        self._units: dict[str, str] = {}
        """Each metric's unit, as first recorded: a metric's unit is fixed by its name."""
        self._templates: dict[tuple[Any, ...], tuple[str, str]] = {}
        """EMF documents by (metric names..., function, trigger): a metric's unit is fixed by its name."""
        self._fd_of: tuple[Any, int | None] = (None, None)
        """The stream last written to and its file descriptor (None: written as text)."""

    @property
    def stream(self) -> TextIO:
        # Looked up per write: the Lambda runtime swaps sys.stdout for an unbuffered wrapper after import.
        if self._stream is not None:
            return self._stream
        return sys.stdout if self.on_lambda else sys.stderr

    def begin(self, context: Any, trigger: str, function: str | None) -> None:
        """Start an invocation: its context goes on every log line until `end`. The fields are
        only assembled when a line is written: a successful request writes none."""
        self.context, self.trigger, self.invocation_cold = context, trigger, self.cold_start
        self._fields = None
        self.name_function(function)
        self.metrics = {}

    def name_function(self, function: str | None) -> None:
        """The model function this invocation serves, once known (HTTP learns it from the route)."""
        self.function = function
        if self.dimensions.get("function") != function:
            self.dimensions = {"service": self.service, "function": function} if function else {"service": self.service}
            self._fields = None

    @property
    def fields(self) -> dict[str, Any]:
        if self._fields is None:
            context = self.context
            self._fields = {
                "cold_start": self.invocation_cold,
                "function_name": getattr(context, "function_name", None),
                "function_memory_size": getattr(context, "memory_limit_in_mb", None),
                "function_arn": getattr(context, "invoked_function_arn", None),
                "function_request_id": getattr(context, "aws_request_id", None),
                "trigger": self.trigger,
                "model_function": self.function,
            }
            trace = os.environ.get("_X_AMZN_TRACE_ID", "").split(";")[0].removeprefix("Root=")
            if trace:
                self._fields["xray_trace_id"] = trace
        return self._fields

    def end(self) -> None:
        self.flush()
        self.cold_start = False
        self.context = self.trigger = None
        self._fields = {}

    def log(self, level: int, message: str, depth: int = 1, **extra: Any) -> None:
        """One JSON line; `depth` picks the frame named in `location` (1: whoever called this)."""
        if level < self.level:
            return
        frame = sys._getframe(depth)
        line = {
            "level": logging.getLevelName(level),
            "location": f"{frame.f_code.co_name}:{frame.f_lineno}",
            "message": message,
            "timestamp": _timestamp(),
            "service": self.service,
            **{k: v for k, v in self.fields.items() if v is not None},
            **extra,
        }
        self.write(line)

    def info(self, message: str, **extra: Any) -> None:
        self.log(logging.INFO, message, depth=2, **extra)

    def warning(self, message: str, **extra: Any) -> None:
        self.log(logging.WARNING, message, depth=2, **extra)

    def error(self, message: str, **extra: Any) -> None:
        self.log(logging.ERROR, message, depth=2, **extra)

    def metric(self, name: str, value: float, unit: str = "Count") -> None:
        """Record one value; several values of one metric in an invocation are sent as a list.
        Each is kept as something `%s` writes as its JSON: a plain int, a finite float (a NumPy
        scalar's str is not always JSON), "null" for NaN and Infinity, a duration's text."""
        if type(value) is not int:
            value = float(value)
            if not _isfinite(value):
                value = "null"  # type: ignore[assignment]
        metrics = self.metrics
        held = metrics.get(name)
        if held is None:
            metrics[name] = value
            self._units.setdefault(name, unit)
        elif type(held) is _Series:
            held.append(value)
        else:
            metrics[name] = _Series((held, value))

    def milliseconds(self, name: str, nanoseconds: int) -> None:
        """A duration in milliseconds to the microsecond, kept as its JSON text: made from
        integers, without a float's conversion to decimal."""
        if not self.metrics_enabled:  # nothing will be written
            return
        whole, micro = divmod((nanoseconds + 500) // 1000, 1000)
        metrics = self.metrics
        if name in metrics:  # several in one invocation: the `_Series` that `metric` keeps
            self.metric(name, whole + micro / 1000, "Milliseconds")
            return
        metrics[name] = "%d.%03d" % (whole, micro)  # noqa: UP031 - 0.5-0.7 us less per invocation than the f-string, measured in the handler
        self._units.setdefault(name, "Milliseconds")

    def flush(self) -> None:
        """Write the invocation's metrics as one Embedded Metric Format document. Everything
        but the numbers repeats from one invocation to the next, so it is encoded once per
        shape (metric names, units, dimensions, trigger): a constant head (the `_aws` directive)
        and a short tail with a slot per number, the only part formatted per invocation."""
        metrics = self.metrics
        self.metrics = {}
        if not metrics or not self.metrics_enabled:
            return
        shape = (*metrics, self.function, self.trigger)  # the dimensions follow from the function
        template = self._templates.get(shape)
        if template is None:
            units = tuple((name, self._units[name]) for name in metrics)
            template = self._templates[shape] = self._template(units)
        request_id = getattr(self.context, "aws_request_id", None)
        quoted = _quote(request_id if type(request_id) is str else str(request_id)) if request_id else "null"
        # each value is kept as `%s` writes its JSON (see `metric`): no conversion here
        self._write(template[0] + template[1] % (time.time_ns() // 1_000_000, *metrics.values(), quoted))

    def document(self, dimensions: dict[str, str], metrics: list[tuple[str, str, float]]) -> None:
        """One EMF document of its own, outside the invocation's: metrics with other dimensions
        (a drift window's per-feature PSI), written at once."""
        if not self.metrics_enabled:
            return
        directive = {
            "Namespace": self.namespace,
            "Dimensions": [list(dimensions)],
            "Metrics": [{"Name": name, "Unit": unit} for name, unit, _ in metrics],
        }
        values = {name: value if math.isfinite(value) else None for name, _, value in metrics}
        timestamp = int(time.time() * 1000)
        self.write({"_aws": {"Timestamp": timestamp, "CloudWatchMetrics": [directive]}, **dimensions, **values})

    def _template(self, metrics: tuple[tuple[str, str], ...]) -> tuple[str, str]:
        """The document as a head without slots and a `%` format of the rest. `Timestamp` closes
        `_aws` (JSON members have no order), so the head, up to it, is copied as it is."""
        directive = {
            "Namespace": self.namespace,
            "Dimensions": [list(self.dimensions)],
            "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics],
        }
        fixed = {**self.dimensions, "trigger": self.trigger}
        head = _encode({"_aws": {"CloudWatchMetrics": [directive], "Timestamp": 0}})[: -len("0}}")]
        values = "".join(f",{_quote(name).replace('%', '%%')}:%s" for name, _ in metrics)
        rest = _encode(fixed)[1:-1].replace("%", "%%")
        return head, "%s}," + rest + values + ',"function_request_id":%s}\n'

    def write(self, document: dict[str, Any]) -> None:
        self.emit(_encode(document))

    def emit(self, line: str) -> None:
        self._write(line + "\n")

    def _write(self, lines: str) -> None:
        """Whole lines, in one system call: straight to the file descriptor of the process's
        stdout or stderr (on Lambda, the log pipe), which skips the text layer's encoding,
        buffering and flushes (~4 µs of each invocation's EMF document); a stream handed in, or
        one without a descriptor, is written as text."""
        stream = self.stream
        fd_of = self._fd_of
        if stream is not fd_of[0]:
            fd_of = self._fd_of = (stream, _fileno(stream) if self._stream is None else None)
        fd = fd_of[1]
        if fd is None:
            stream.write(lines)
            stream.flush()
            return
        if not (self.on_lambda and stream is sys.stdout):
            # what others left in the stream's buffer goes out first; on Lambda nothing waits there
            # (the runtime wraps stdout to flush on every write)
            stream.flush()
        data = lines.encode()
        written = os.write(fd, data)
        while written < len(data):  # a pipe may take a long line in parts
            data = data[written:]
            written = os.write(fd, data)


class JsonLogHandler(logging.Handler):
    """Routes the core's `modelfn` logger through the same JSON lines on Lambda."""

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__()
        self.telemetry = telemetry

    def emit(self, record: logging.LogRecord) -> None:
        extra: dict[str, Any] = {"logger": record.name, "location": f"{record.funcName}:{record.lineno}"}
        if record.exc_info:
            extra["exception"] = logging.Formatter().formatException(record.exc_info)
            extra["exception_name"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        try:
            self.telemetry.log(record.levelno, record.getMessage(), **extra)
        except Exception:
            self.handleError(record)


def route_core_logs(telemetry: Telemetry) -> None:
    """On Lambda, the core's log records become JSON lines instead of the runtime's text format."""
    core = logging.getLogger("modelfn")
    if not any(isinstance(h, JsonLogHandler) for h in core.handlers):
        core.addHandler(JsonLogHandler(telemetry))
        core.setLevel(telemetry.level)
        core.propagate = False


telemetry = Telemetry()
"""One per process: the cold-start flag belongs to the process, not to a function."""
