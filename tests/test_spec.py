from pathlib import Path

import pytest

from modelfn.errors import SpecError
from modelfn.spec import discover, load_spec, parse_spec

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
