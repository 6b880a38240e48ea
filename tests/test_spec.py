import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelfn.errors import SpecError
from modelfn.spec import COMPILED_SPEC, discover, load_spec, parse_spec, write_compiled_spec

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"


def test_name_and_source_are_enough_and_defaults_are_safe(tmp_path: Path) -> None:
    spec = parse_spec({"name": "tiny", "model": {"source": "m.onnx"}}, tmp_path)
    assert spec.folder == tmp_path
    assert spec.io.codec == "tensor"
    assert spec.runtime.accelerator == "cpu"
    assert spec.batching.max_batch_size == 32
    assert spec.deploy.provisioned_concurrency == 0 and spec.deploy.snapstart is False
    assert spec.triggers.http is not None and spec.triggers.http.auth == "iam"
    assert spec.triggers.s3 is None and spec.triggers.sqs is None


def test_trigger_true_takes_defaults_and_false_disables(tmp_path: Path) -> None:
    spec = parse_spec(
        {"name": "t", "model": {"source": "m"}, "triggers": {"s3": True, "sqs": {"batch_size": 5}, "http": False}},
        tmp_path,
    )
    assert spec.triggers.s3 is not None and spec.triggers.s3.output_prefix == "predictions/"
    assert spec.triggers.sqs is not None and spec.triggers.sqs.batch_size == 5
    assert spec.triggers.http is None


def test_invalid_file_names_the_file_the_field_and_what_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "function.toml").write_text(
        'name = "ok"\n[model]\nsource = "m.onnx"\n[runtime]\naccelerator = "tpu"\nthread = 2\n'
    )
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    message = caught.value.message
    assert str(tmp_path / "function.toml") in message
    assert "runtime.accelerator: expected one of 'cpu', 'gpu', got 'tpu'" in message
    assert "runtime.thread: unknown field" in message and "threads" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": "Bad Name", "model": {"source": "m"}}, "name: must be matching"),
        ({"name": "x"}, "model: required field is missing"),
        ({"name": "x", "model": {"source": "m", "sha256": "abc"}}, "model.sha256: must be matching"),
        ({"name": "x", "model": {"source": "m"}, "deploy": {"memory_mb": 64}}, "deploy.memory_mb: must be >= 128"),
        (
            {"name": "x", "model": {"source": "m"}, "deploy": {"snapstart": True, "provisioned_concurrency": 2}},
            "snapstart and provisioned_concurrency cannot be combined",
        ),
        (
            {"name": "x", "model": {"source": "m"}, "deploy": {"snapstart": True, "python": "3.11"}},
            "needs python 3.12",
        ),
        (
            {"name": "x", "model": {"source": "m"}, "triggers": {"s3": {"prefix": "", "output_prefix": "out/"}}},
            "would re-trigger",
        ),
        ({"name": "x", "model": {"source": "m"}, "io": {"codec": "text"}}, "needs a tokenizer"),
        (
            {"name": "x", "model": {"source": "m"}, "batching": {"max_batch_size": "big"}},
            "expected an integer, got 'big'",
        ),
    ],
)
def test_invalid_values_are_refused_with_the_rule(tmp_path: Path, data: dict, expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        parse_spec(data, tmp_path)


def test_malformed_toml_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "function.toml").write_text("name = \n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(tmp_path)


def test_every_example_function_validates() -> None:
    found = discover(FUNCTIONS)
    assert {"breast-cancer", "digits"} <= set(found)
    for name, path in found.items():
        assert load_spec(path).name == name


def test_tables_are_built_like_dataclasses_by_position_name_and_default() -> None:
    # the tables share one __init__ rather than a generated one each (cold start): same behaviour
    from modelfn.spec import BlobTrigger, EventBridgeTrigger, ModelSpec

    blob = BlobTrigger("in/{name}", output_path="out/{name}.json")
    assert (blob.path, blob.output_path, blob.connection) == ("in/{name}", "out/{name}.json", "AzureWebJobsStorage")
    first, second = EventBridgeTrigger(), EventBridgeTrigger()
    assert first.source == ["modelfn"] and first.source is not second.source  # factories run per instance
    assert repr(ModelSpec("m.onnx")) == "ModelSpec(source='m.onnx', sha256=None, version='1', versions={})"
    with pytest.raises(TypeError, match="missing required argument 'source'"):
        ModelSpec()
    with pytest.raises(TypeError, match="unexpected keyword argument 'bucket'"):
        BlobTrigger(bucket="b")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for 'path'"):
        BlobTrigger("a/{name}", path="b/{name}")  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 3 positional arguments, 4 given"):
        BlobTrigger("a", "b", "c", "d")  # type: ignore[call-arg]


def _spec_folder(tmp_path: Path, toml: str) -> Path:
    (tmp_path / "function.toml").write_text(toml)
    return tmp_path


SAMPLE = 'name = "tiny"\ndescription = "from the toml"\n[model]\nsource = "m.onnx"\n[batching]\nmax_latency_ms = 2\n'


def test_a_bundles_compiled_spec_is_read_while_it_holds_the_tomls_text(tmp_path: Path) -> None:
    folder = _spec_folder(tmp_path, SAMPLE)
    from_toml = load_spec(folder)
    compiled = write_compiled_spec(folder)
    assert compiled == folder / COMPILED_SPEC
    assert repr(load_spec(folder)) == repr(from_toml)  # same values, same types (2 -> 2.0)
    document = json.loads(compiled.read_text())
    document["table"]["description"] = "from the json"
    compiled.write_text(json.dumps(document))
    assert load_spec(folder).description == "from the json"  # read instead of the TOML
    (folder / "function.toml").write_text(SAMPLE + "[runtime]\nthreads = 2\n")  # edited after bundling
    edited = load_spec(folder)
    assert (edited.description, edited.runtime.threads) == ("from the toml", 2)


def test_a_compiled_spec_is_validated_like_the_toml(tmp_path: Path) -> None:
    folder = _spec_folder(tmp_path, SAMPLE.replace("max_latency_ms = 2", "max_latency_ms = -1"))
    write_compiled_spec(folder)
    with pytest.raises(SpecError, match=r"batching\.max_latency_ms: must be >= 0, got -1\.0"):
        load_spec(folder)


def test_no_compiled_spec_for_a_table_json_cannot_carry(tmp_path: Path) -> None:
    # dates and NaN have no JSON form: the bundle goes without, and the TOML is read (and judged) as ever
    dated = _spec_folder(tmp_path, SAMPLE.replace('"from the toml"', "2026-11-30"))
    assert write_compiled_spec(dated) is None and not (dated / COMPILED_SPEC).exists()
    with pytest.raises(SpecError, match=r"description: expected a string, got datetime\.date\(2026, 11, 30\)"):
        load_spec(dated)
    (tmp_path / "function.toml").write_text(SAMPLE + "[deploy]\ncpu = nan\n")
    assert write_compiled_spec(tmp_path) is None and not (tmp_path / COMPILED_SPEC).exists()


@pytest.mark.slow
def test_loading_a_compiled_spec_imports_no_toml_parser(tmp_path: Path) -> None:
    folder = _spec_folder(tmp_path, SAMPLE)
    code = (
        f"import sys; from modelfn.spec import load_spec; load_spec({str(folder)!r}); print('tomllib' in sys.modules)"
    )
    parsed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    write_compiled_spec(folder)
    compiled = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (parsed.stdout.strip(), compiled.stdout.strip()) == ("True", "False")
