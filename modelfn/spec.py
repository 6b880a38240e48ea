"""`function.toml`: the one validated description of a served model, read by the core,
the CLI and the CDK app alike. Every field has a safe default; `name` and `model.source`
are enough.

The schema is plain dataclasses checked by a small validator below rather than pydantic:
importing pydantic and building these models costs about 0.2 s, more than ONNX Runtime
itself, and every Lambda cold start would pay it. For the same reason they are neither
frozen nor comparable (that code generation costs 12 ms per import), and every table shares
one `__init__` and one `__repr__` instead of having them generated: treat a loaded spec as
read-only."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from modelfn.errors import SpecError

SPEC_FILE = "function.toml"


def _f(default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING, help: str = "", **rules: Any) -> Any:
    """A field with validation rules: ge, le, gt, pattern."""
    return field(default=default, default_factory=factory, metadata={"help": help, **rules})


def _init(self: Any, *args: Any, **values: Any) -> None:
    """What dataclasses would generate: the fields, by position or name, else their defaults."""
    fields = dataclasses.fields(self)
    if len(args) > len(fields):
        raise TypeError(f"{type(self).__name__}() takes {len(fields)} positional arguments, {len(args)} given")
    for spec_field, value in zip(fields, args, strict=False):
        if spec_field.name in values:
            raise TypeError(f"{type(self).__name__}() got multiple values for {spec_field.name!r}")
        values[spec_field.name] = value
    for spec_field in fields:
        if spec_field.name in values:
            value = values.pop(spec_field.name)
        elif spec_field.default is not dataclasses.MISSING:
            value = spec_field.default
        elif spec_field.default_factory is not dataclasses.MISSING:
            value = spec_field.default_factory()
        else:
            raise TypeError(f"{type(self).__name__}() missing required argument {spec_field.name!r}")
        setattr(self, spec_field.name, value)
    if values:
        raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(values))!r}")


def _repr(self: Any) -> str:
    values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
    return f"{type(self).__name__}({values})"


if typing.TYPE_CHECKING:  # to a type checker a table is the dataclass it behaves as
    from dataclasses import dataclass as _table
else:

    def _table(cls: type) -> type:
        """A dataclass with the shared `__init__` and `__repr__`: generating them per class cost
        ~3.7 ms of every Lambda cold start (compiling 23 `__init__`s was most of the import)."""
        table = dataclass(init=False, eq=False, repr=False)(cls)
        table.__init__ = _init
        table.__repr__ = _repr
        return table


VERSION_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
"""A model version's name: it goes into paths (`/v2/models/{name}/versions/{version}`) and metric dimensions."""


@_table
class VersionSpec:
    """Another version of the function's model, served beside `[model]` (`[model.versions.<v>]`)."""

    source: str = _f(help="Path relative to the function folder, or s3://, gs://, https:// URI.")
    sha256: str | None = _f(None, pattern=r"[0-9a-fA-F]{64}", help="Pin checked before loading.")
    io: IOSpec | None = _f(None, help="This version's own [io] table, replacing the function's; default: [io].")


@_table
class ModelSpec:
    """`[model]`: the default version's graph (in the folder, or s3://, gs://, https://), its
    digest, and the other versions."""

    source: str = _f(help="Path relative to the function folder, or s3://, gs://, https:// URI.")
    sha256: str | None = _f(None, pattern=r"[0-9a-fA-F]{64}", help="Pin checked before loading.")
    version: str = _f("1", pattern=VERSION_NAME, help="This model's version name: the default version.")
    versions: dict[str, VersionSpec] = _f(factory=dict, help="Other versions by name, each its own session.")

    def problems(self) -> list[str]:
        found = [
            f"model.versions.{name}: a version name is letters, digits, '.', '_' and '-' (64 at most)"
            for name in self.versions
            if not re.fullmatch(VERSION_NAME, name)
        ]
        if self.version in self.versions:
            found.append(f"model.versions.{self.version}: that is [model]'s own version (model.version)")
        return found

    @property
    def version_names(self) -> list[str]:
        return [self.version, *self.versions]


@_table
class ImageSpec:
    """`[io.image]`: how the image codec sizes, lays out and normalises a picture before the graph."""

    width: int = _f(0, ge=0, help="Resize to this width; 0 takes it from the model.")
    height: int = _f(0, ge=0)
    mode: Literal["L", "RGB"] = "RGB"
    layout: Literal["NCHW", "NHWC", "flat"] = "NCHW"
    scale: float = 1 / 255
    mean: list[float] = _f(factory=list)
    std: list[float] = _f(factory=list)
    invert: bool = False
    max_pixels: int = _f(
        40_000_000, ge=1, help="Most pixels one request may decode (all its images), read from their headers first."
    )


@_table
class IOSpec:
    """`[io]`: the codec that reads requests and writes answers, and the limits on what it accepts."""

    codec: Literal["tensor", "records", "image", "text"] = "tensor"
    input: str | None = _f(None, help="Model input fed by the records, image or text codec.")
    columns: list[str] = _f(factory=list, help="Feature order for the records codec.")
    image: ImageSpec = _f(factory=lambda: ImageSpec())
    nan_policy: Literal["reject", "allow"] = "reject"
    max_body_mb: float = _f(32.0, gt=0, help="Largest request body the local server and Cloud Run accept.")


@_table
class HooksSpec:
    """`[hooks]`: `module:function` references in the function folder, run around the graph."""

    preprocess: str | None = _f(None, pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", help="'module:function'")
    postprocess: str | None = _f(None, pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
    tokenize: str | None = _f(None, pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@_table
class RuntimeSpec:
    """`[runtime]`: where and how ONNX Runtime runs the graph."""

    accelerator: Literal["cpu", "gpu"] = "cpu"
    gpu_fallback: bool = _f(False, help="Run on CPU when a GPU was asked for but none is there.")
    threads: int = _f(1, ge=0, help="Intra-op threads; 0 lets ONNX Runtime decide.")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    warmup: bool = True


@_table
class BatchingSpec:
    """`[batching]`: how the server merges concurrent requests into one run."""

    enabled: bool = True
    max_batch_size: int = _f(32, ge=1)
    max_latency_ms: float = _f(5.0, ge=0)
    pad_value: float | None = _f(None, help="Pad the second axis with this value to merge unequal lengths.")


@_table
class DeploySpec:
    """`[deploy]`: what each provider's function gets (memory, timeout, architecture, warm capacity)."""

    memory_mb: int = _f(1024, ge=128, le=10240)
    timeout_s: int = _f(30, ge=1, le=900)
    ephemeral_storage_mb: int = _f(512, ge=512, le=10240)
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    python: Literal["3.11", "3.12", "3.13"] = "3.12"
    provisioned_concurrency: int = _f(0, ge=0)
    provisioned_concurrency_max: int = _f(0, ge=0, help="Upper bound for autoscaling; 0 means no scaling.")
    snapstart: bool = False
    min_instances: int = _f(0, ge=0)
    max_instances: int = _f(10, ge=1)
    concurrency: int = _f(80, ge=1, le=1000)
    cpu: float = _f(1.0, gt=0)
    package: Literal["auto", "zip", "container"] = "auto"
    rollout: Literal["all-at-once", "canary", "linear"] = _f(
        "all-at-once", help="AWS: shift traffic to a new version gradually (CodeDeploy), rolled back by the alarms."
    )

    def problems(self) -> list[str]:
        found = []
        if self.snapstart and self.provisioned_concurrency:
            found.append(
                "deploy: snapstart and provisioned_concurrency cannot be combined on one Lambda alias; choose one"
            )
        if self.snapstart and self.python == "3.11":
            found.append("deploy.snapstart: SnapStart for Python needs python 3.12 or newer")
        if self.provisioned_concurrency_max and self.provisioned_concurrency_max < self.provisioned_concurrency:
            found.append("deploy.provisioned_concurrency_max: must be at least provisioned_concurrency")
        return found


@_table
class HttpTrigger:
    """`[triggers.http]`: the HTTP front door on AWS (API Gateway, Function URL) and its auth."""

    api: bool = True
    function_url: bool = False
    auth: Literal["iam", "none"] = "iam"


@_table
class S3Trigger:
    """`[triggers.s3]`: objects landing in a bucket are predicted, results written beside them or elsewhere."""

    bucket: str | None = None
    prefix: str = "incoming/"
    suffix: str = ""
    output_prefix: str = "predictions/"
    output_bucket: str | None = None

    def problems(self) -> list[str]:
        if self.output_bucket in (None, self.bucket) and self.output_prefix.startswith(self.prefix):
            return [
                f"triggers.s3.output_prefix: {self.output_prefix!r} lies under prefix {self.prefix!r}, "
                "so results would re-trigger the function"
            ]
        return []


@_table
class SqsTrigger:
    """`[triggers.sqs]`: messages of a queue are predicted in batches, results sent on."""

    batch_size: int = _f(10, ge=1, le=10000)
    output_queue: str | None = _f(None, help="Queue URL for results.")
    output_s3: str | None = _f(None, pattern=r"s3://[^/]+(/.*)?", help="s3://bucket/prefix for results.")


@_table
class TopicTrigger:
    """`[triggers.sns]` and `[triggers.pubsub]`: messages published to a topic are predicted."""

    topic: str | None = None
    output_topic: str | None = None


@_table
class EventBridgeTrigger:
    """`[triggers.eventbridge]`: events matching a source and detail type are predicted."""

    source: list[str] = _f(factory=lambda: ["modelfn"])
    detail_type: list[str] = _f(factory=lambda: ["predict"])


@_table
class GcsTrigger:
    """`[triggers.gcs]`: objects finalised in a Cloud Storage bucket are predicted."""

    bucket: str | None = None
    prefix: str = "incoming/"
    output_prefix: str = "predictions/"


@_table
class BlobTrigger:
    """`[triggers.blob]`: blobs written to an Azure Storage path are predicted."""

    path: str = "incoming/{name}"
    output_path: str = "predictions/{name}.json"
    connection: str = "AzureWebJobsStorage"

    def problems(self) -> list[str]:
        # Results written where the trigger watches start the function again, without end.
        watched, written = (p.split("{")[0] for p in (self.path, self.output_path))
        if written.startswith(watched) or watched.startswith(written):
            return [
                f"triggers.blob.output_path: {self.output_path!r} overlaps path {self.path!r}, so results would "
                "re-trigger the function; write them to another container (e.g. 'predictions/{name}.json')"
            ]
        return []


@_table
class QueueTrigger:
    """`[triggers.queue]`: messages of an Azure Storage queue are predicted."""

    queue: str = "modelfn-requests"
    output_queue: str = "modelfn-results"
    connection: str = "AzureWebJobsStorage"

    def problems(self) -> list[str]:
        found = []
        if self.queue == self.output_queue:
            found.append("triggers.queue.output_queue: results sent to the trigger's own queue would re-trigger it")
        # Azure queue names; the host adds '-poison' to the trigger queue, hence 56 characters at most.
        for key, name, longest in (("queue", self.queue, 56), ("output_queue", self.output_queue, 63)):
            if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))+", name) or not 3 <= len(name) <= longest:
                rule = f"3-{longest} lower-case letters, digits, single '-'"
                found.append(f"triggers.queue.{key}: {name!r} is not an Azure queue name ({rule})")
        return found


@_table
class TriggersSpec:
    """A trigger is `true` for its defaults, a table to configure it, or absent/`false`."""

    http: HttpTrigger | None = _f(factory=lambda: HttpTrigger())
    s3: S3Trigger | None = None
    sqs: SqsTrigger | None = None
    sns: TopicTrigger | None = None
    eventbridge: EventBridgeTrigger | None = None
    pubsub: TopicTrigger | None = None
    gcs: GcsTrigger | None = None
    blob: BlobTrigger | None = None
    queue: QueueTrigger | None = None


@_table
class OptimizeSpec:
    """What `modelfn optimize` must keep: an optimised model is refused below these, on sample requests."""

    min_label_agreement: float = _f(
        0.995,
        ge=0,
        le=1,
        help="Share of sample requests with the same label (integer outputs, argmax of probabilities).",
    )
    min_cosine: float = _f(0.99, ge=-1, le=1, help="Mean cosine similarity to the original's vectors (embeddings).")
    max_abs_diff: float | None = _f(None, ge=0, help="Largest absolute difference allowed on other float outputs.")


@_table
class DriftSpec:
    """Drift against `profile.json` (`modelfn profile`): counted per instance, emitted per window, no payloads kept."""

    enabled: bool = _f(True, help="Count into the profile's bins when the function has a profile.")
    profile: str = _f("profile.json", help="The reference profile, relative to the function folder.")
    window_requests: int = _f(1000, ge=1, help="Emit after this many requests...")
    window_seconds: float = _f(60.0, gt=0, help="...or after this long, whichever comes first.")
    min_rows: int = _f(500, ge=1, help="A window with fewer rows is carried into the next one (PSI is noisy below).")
    alarm_psi: float = _f(0.25, gt=0, help="PSI at or above this is drift: the CloudWatch alarm's threshold.")


@_table
class CacheSpec:
    """Answers kept by a hash of the decoded inputs: in-process, and shared through Redis when a URL is set."""

    enabled: bool = False
    size: int = _f(1024, ge=1, help="Entries kept in this process (least recently used go first).")
    ttl_s: float = _f(300.0, gt=0, help="Seconds an entry lives, here and in Redis.")
    max_entry_kb: float = _f(256.0, gt=0, help="Larger answers are not cached.")
    url: str | None = _f(
        None, pattern=r"rediss?://.+", help="redis:// or rediss:// of a shared cache; $MODELFN_CACHE_URL wins."
    )
    timeout_ms: float = _f(50.0, gt=0, help="Longest a shared-cache call may take before it counts as a miss.")


@_table
class TrafficSpec:
    """Which version answers the unversioned routes and events, and which one shadows it."""

    weights: dict[str, float] = _f(
        factory=dict, help="Share of requests per version, e.g. { 1 = 90, 2 = 10 }; empty: all to model.version."
    )
    shadow: str | None = _f(
        None, help="A version sent a copy of the requests; its answers are compared, never returned."
    )
    shadow_sample: float = _f(1.0, ge=0, le=1, help="Share of requests copied to the shadow version.")

    def problems(self) -> list[str]:
        found = [f"traffic.weights.{v}: must be >= 0, got {w}" for v, w in self.weights.items() if w < 0]
        if self.weights and not found and sum(self.weights.values()) <= 0:
            found.append("traffic.weights: at least one version needs a weight above 0")
        return found


@_table
class BatchSpec:
    """Bulk predictions over a prefix at scale (`[batch]`): a Step Functions Distributed Map over the
    function's Lambda (AWS, s3:// input) and a Cloud Run Job sharded by task (Google Cloud)."""

    input: str = _f(pattern=r"(s3|gs|az)://[^/]+(/.*)?", help="The prefix scored: s3://, gs:// or az://bucket/prefix/.")
    output: str = _f(pattern=r"(s3|gs|az)://[^/]+(/.*)?", help="Where outputs go, in the input's layout.")
    items_per_batch: int = _f(
        10, ge=1, le=1000, help="AWS: objects per Lambda invocation (ItemBatcher); its summary must fit 256 KB."
    )
    tolerated_failure_percentage: float = _f(
        0.0, ge=0, le=100, help="AWS: the share of objects that may fail before the map run fails."
    )
    max_concurrency: int = _f(
        100, ge=1, le=10000, help="AWS: Lambda invocations at once; Google Cloud: tasks at once (parallelism)."
    )
    tasks: int = _f(10, ge=1, le=10000, help="Google Cloud: the Cloud Run Job's task count (shards).")
    task_timeout_s: int = _f(3600, ge=1, le=86400, help="Google Cloud: how long one task may run.")
    schedule: str | None = _f(None, help="Five-field unix cron, e.g. '0 2 * * *': run the whole prefix then.")
    timezone: str = _f("UTC", help="The schedule's time zone (IANA name).")
    results_prefix: str = _f("batch-runs/", help="AWS: the map run's result files, in the output bucket.")

    def problems(self) -> list[str]:
        found = []
        (src_scheme, src_bucket, src_prefix), (out_scheme, out_bucket, out_prefix) = (
            bucket_uri(u) for u in (self.input, self.output)
        )
        if (src_scheme, src_bucket) == (out_scheme, out_bucket) and out_prefix.startswith(src_prefix):
            found.append(
                f"batch.output: {self.output!r} lies under input {self.input!r}, so outputs would be listed as inputs"
            )
        if (src_scheme, src_bucket) == (out_scheme, out_bucket) and self.results_prefix.startswith(src_prefix):
            found.append(f"batch.results_prefix: {self.results_prefix!r} lies under the input prefix {src_prefix!r}")
        if self.schedule is not None:
            from modelfn import cron

            found.extend(f"batch.schedule: {p}" for p in cron.problems(self.schedule))
        return found


def bucket_uri(uri: str) -> tuple[str, str, str]:
    """("s3", "bucket", "prefix/") of `s3://bucket/prefix`, the prefix ending in '/' when not empty."""
    scheme, _, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    return scheme, bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"


@_table
class FunctionSpec:
    """One `function.toml`: a model function and everything about serving and deploying it."""

    name: str = _f(pattern=r"[a-z0-9][a-z0-9-]{0,62}", help="Lower-case letters, digits and '-'.")
    model: ModelSpec = _f()
    description: str = ""
    io: IOSpec = _f(factory=lambda: IOSpec())
    hooks: HooksSpec = _f(factory=lambda: HooksSpec())
    runtime: RuntimeSpec = _f(factory=lambda: RuntimeSpec())
    batching: BatchingSpec = _f(factory=lambda: BatchingSpec())
    deploy: DeploySpec = _f(factory=lambda: DeploySpec())
    triggers: TriggersSpec = _f(factory=lambda: TriggersSpec())
    optimize: OptimizeSpec = _f(factory=lambda: OptimizeSpec())
    drift: DriftSpec = _f(factory=lambda: DriftSpec())
    cache: CacheSpec = _f(factory=lambda: CacheSpec())
    traffic: TrafficSpec = _f(factory=lambda: TrafficSpec())
    batch: BatchSpec | None = None
    folder: Path = _f(Path("."), help="Set by the loader: the folder holding function.toml.")

    def problems(self) -> list[str]:
        found = []
        if self.io.codec == "text" and not self.hooks.tokenize:
            found.append("hooks.tokenize: io.codec = 'text' needs a tokenizer, 'module:function'")
        if self.runtime.accelerator == "gpu" and (self.deploy.provisioned_concurrency or self.deploy.snapstart):
            found.append(
                "deploy: provisioned_concurrency and snapstart are Lambda levers; a gpu function never runs on Lambda"
            )
        found.extend(self.traffic_problems())
        return found

    def drift_profile(self) -> Path | None:
        """The drift profile this function ships when drift is on, else None: what decides the
        drift counting at run time and the drift alarm or alert on every provider."""
        path = self.folder / self.drift.profile
        return path if self.drift.enabled and path.is_file() else None

    def traffic_problems(self) -> list[str]:
        names = self.model.version_names
        named = [(f"traffic.weights.{v}", v) for v in self.traffic.weights]
        if self.traffic.shadow is not None:
            named.append(("traffic.shadow", self.traffic.shadow))
        found = [f"{where}: no version {v!r}; the versions are {names}" for where, v in named if v not in names]
        if self.traffic.shadow and self.traffic.weights.get(self.traffic.shadow, 0) > 0:
            found.append(f"traffic.shadow: version {self.traffic.shadow!r} also has live weight; a shadow only listens")
        return found


@cache
def _hint(cls: type, name: str) -> Any:
    """The type of one field, evaluated when a spec first sets it: `get_type_hints` evaluates
    every field of the table (~0.5 ms of a Lambda cold start for the few a spec sets)."""
    annotation = cls.__dataclass_fields__[name].type  # type: ignore[attr-defined]
    return eval(annotation, vars(sys.modules[cls.__module__])) if isinstance(annotation, str) else annotation


def _describe_type(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(kind))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe_type(a) for a in typing.get_args(kind) if a is not type(None))
    if origin is list:
        return f"a list of {_describe_type(typing.get_args(kind)[0])}"
    if origin is dict:
        return f"a table of {_describe_type(typing.get_args(kind)[1])}"
    if dataclasses.is_dataclass(kind):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def _value(kind: Any, value: Any, where: str, rules: dict[str, Any], errors: list[str]) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is False and dataclasses.is_dataclass(args[0]):
            return None
        if value is True and dataclasses.is_dataclass(args[0]):
            value = {}
        return _value(args[0], value, where, rules, errors)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a table, got {value!r}")
            return None
        return _build(kind, value, where + ".", errors)  # type: ignore[arg-type]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind)
    if origin is Literal:
        ok = value in typing.get_args(kind)
    elif origin is list:
        if not isinstance(value, list):
            ok = False
        else:
            return [_value(typing.get_args(kind)[0], v, f"{where}[{i}]", {}, errors) for i, v in enumerate(value)]
    elif origin is dict:
        if not isinstance(value, dict):
            ok = False
        else:
            return {str(k): _value(typing.get_args(kind)[1], v, f"{where}.{k}", {}, errors) for k, v in value.items()}
    if not ok:
        errors.append(f"{where}: expected {_describe_type(kind)}, got {value!r}")
        return None
    if kind is float:
        value = float(value)
    for rule, bound in rules.items():
        if _breaks(rule, bound, value):
            text = {"ge": ">=", "le": "<=", "gt": ">", "pattern": "matching"}[rule]
            errors.append(f"{where}: must be {text} {bound}, got {value!r}")
    return value


def _breaks(rule: str, bound: Any, value: Any) -> bool:
    if rule == "pattern":
        return not re.fullmatch(bound, value)
    return bool({"ge": value < bound, "le": value > bound, "gt": value <= bound}[rule])


def _build(cls: type, data: dict[str, Any], prefix: str, errors: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "folder"}
    for key in data:
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown field (allowed: {', '.join(fields)})")
    values = {}
    for name, spec_field in fields.items():
        if name in data:
            rules = {k: v for k, v in spec_field.metadata.items() if k != "help"}
            values[name] = _value(_hint(cls, name), data[name], prefix + name, rules, errors)
        elif spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING:
            errors.append(f"{prefix}{name}: required field is missing")
    if len(errors):
        return None
    instance = cls(**values)
    errors.extend(getattr(instance, "problems", list)())
    return instance


def parse_spec(data: dict[str, Any], folder: Path, origin: str = SPEC_FILE) -> FunctionSpec:
    errors: list[str] = []
    spec = _build(FunctionSpec, data, "", errors)
    if spec is None or errors:
        lines = "\n  ".join(errors)
        raise SpecError(f"{origin} is invalid:\n  {lines}", file=origin, errors=errors)
    return dataclasses.replace(spec, folder=folder)


def load_spec(path: Path | str) -> FunctionSpec:
    """Read a `function.toml` (or the folder holding one) and validate it."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file", file=str(path)) from None
    data = _compiled_table(path, text)
    if data is None:
        import tomllib  # ~1.8 ms of a Lambda cold start: a bundle ships the table as JSON

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML: {exc}", file=str(path)) from None
    return parse_spec(data, path.parent.resolve(), str(path))


COMPILED_SPEC = "function.toml.json"
"""Beside `function.toml` in a deployment bundle: its table as JSON, with the TOML text it was
read from. Trusted only while that text is the file's own, so an edited spec is never shadowed."""


def _compiled_table(path: Path, text: str) -> dict[str, Any] | None:
    try:
        compiled = json.loads(path.with_name(COMPILED_SPEC).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(compiled, dict) or compiled.get("toml") != text or not isinstance(compiled.get("table"), dict):
        return None
    return compiled["table"]  # type: ignore[no-any-return]


def write_compiled_spec(folder: Path) -> Path | None:
    """Write `COMPILED_SPEC` for the `function.toml` in `folder` (a bundle's copy): the function's
    cold start then reads JSON, which the runtime has loaded anyway, instead of importing a TOML
    parser. None, and nothing written, for a table JSON cannot carry as it is (dates, NaN)."""
    import tomllib

    text = (folder / SPEC_FILE).read_text(encoding="utf-8")
    table = tomllib.loads(text)
    try:
        encoded = json.dumps({"toml": text, "table": table}, allow_nan=False)
    except (TypeError, ValueError):
        return None
    target = folder / COMPILED_SPEC
    target.write_text(encoded, encoding="utf-8")
    return target


def functions_dir() -> Path:
    """`MODELFN_FUNCTIONS_DIR`, else `./functions`, else the examples beside this package."""
    configured = os.environ.get("MODELFN_FUNCTIONS_DIR")
    if configured:
        return Path(configured)
    local = Path.cwd() / "functions"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "functions"


def discover(root: Path | None = None) -> dict[str, Path]:
    """Function name -> spec file, for every folder under `root` holding a `function.toml`."""
    root = root or functions_dir()
    found: dict[str, Path] = {}
    for spec_file in sorted(root.glob(f"*/{SPEC_FILE}")):
        found[spec_file.parent.name] = spec_file
    return found


def load_all(root: Path | None = None) -> list[FunctionSpec]:
    return [load_spec(path) for path in discover(root).values()]


# Scripts beside function.toml that make a model which is not committed (it is too large, or trained).
BUILD_SCRIPTS = ("build.py", "train.py")


def not_built(spec: FunctionSpec) -> str | None:
    """`not built yet: run python <script>` for a local model file that is missing while a build
    script sits beside function.toml; None when the model is there, remote, or has no script."""
    if "://" in spec.model.source or (spec.folder / spec.model.source).is_file():
        return None
    for script in BUILD_SCRIPTS:
        path = spec.folder / script
        if path.is_file():
            shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
            return f"not built yet: run python {shown}"
    return None
