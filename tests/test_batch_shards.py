"""Sharding a bulk job over parallel tasks (`--shard i/n`, Cloud Run Jobs' task index and count):
every input is scored by exactly one shard whatever the listing's order, and a shard reruns
alone; the `[batch]` table and its schedule as both schedulers read it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfn import cli, cron
from modelfn.batch import shards
from modelfn.errors import BadRequest, SpecError
from modelfn.spec import FunctionSpec, parse_spec

KEYS = st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40), unique=True)


@settings(max_examples=300, deadline=None)
@given(names=KEYS, count=st.integers(min_value=1, max_value=300), seed=st.integers())
def test_every_input_lands_in_exactly_one_shard_whatever_the_listing_order(
    names: list[str], count: int, seed: int
) -> None:
    listing = list(names)
    parts = [shards.Shard(i, count).select(listing) for i in range(count)]
    assert sorted(name for part in parts for name in part) == sorted(names)  # the union, each once
    assert sum(len(part) for part in parts) == len(names)  # disjoint
    random.Random(seed).shuffle(listing)
    again = [shards.Shard(i, count).select(listing) for i in range(count)]
    assert [sorted(p) for p in again] == [sorted(p) for p in parts]  # the order of the listing changes nothing
    # a shard rerun alone, after other inputs came and went, scores the same inputs it had
    extra = [f"later/{n}" for n in names[: len(names) // 2]]
    for index in range(min(count, 5)):
        rerun = shards.Shard(index, count).select(listing[::2] + extra)
        assert {n for n in rerun if n in names} == set(parts[index]) & set(listing[::2])


def test_shards_spread_a_realistic_listing_evenly() -> None:
    names = [f"day-{d:02d}/part-{p:05d}.parquet" for d in range(30) for p in range(100)]
    sizes = [len(shards.Shard(i, 10).select(names)) for i in range(10)]
    assert sum(sizes) == 3000
    assert max(sizes) < 360 and min(sizes) > 240  # within 20% of 300 each


def test_the_shard_comes_from_the_flag_or_cloud_run_s_task_variables() -> None:
    assert shards.parse("3/10") == shards.Shard(3, 10)
    for bad in ("10/10", "3", "a/b", "-1/4", "1/0"):
        with pytest.raises(BadRequest):
            shards.parse(bad)
    assert shards.from_env({"CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "5"}) == shards.Shard(2, 5)
    assert shards.from_env({"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "1"}) is None
    assert shards.from_env({}) is None


def write_inputs(folder: Path, rows: np.ndarray, files: int) -> list[str]:
    folder.mkdir(parents=True)
    names = []
    for i in range(files):
        name = f"part-{i:03d}.jsonl"
        chunk = rows[i * 3 : i * 3 + 3]
        (folder / name).write_text("".join(json.dumps({"X": r.tolist()}) + "\n" for r in chunk))
        names.append(name)
    return names


def test_cli_shards_score_the_folder_once_between_them_and_one_reruns_alone(
    tmp_path: Path, cancer_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = write_inputs(tmp_path / "in", cancer_rows, 24)
    out = tmp_path / "out"
    args = ["batch", "breast-cancer", "--input", str(tmp_path / "in"), "--output", str(out), "--quiet"]
    seen: dict[str, int] = {}
    for index in range(4):
        monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", str(index))
        monkeypatch.setenv("CLOUD_RUN_TASK_COUNT", "4")
        before = set(p.name for p in out.glob("*.jsonl")) if out.exists() else set()
        assert cli.main(args) == 0
        for name in set(p.name for p in out.glob("*.jsonl")) - before:
            seen[name] = index
    assert sorted(seen) == names
    assert all(shards.shard_of(name, 4) == index for name, index in seen.items())
    # shard 2 failed: its outputs are gone; it runs again alone (the flag wins over the environment)
    lost = [name for name, index in seen.items() if index == 2]
    for name in lost:
        (out / name).unlink()
    assert cli.main([*args, "--shard", "2/4"]) == 0
    assert sorted(p.name for p in out.glob("*.jsonl")) == names
    lines = (out / lost[0]).read_text().splitlines()
    assert len(lines) == 3 and all("prediction" in json.loads(line) for line in lines)


def spec_with(batch: dict[str, object]) -> FunctionSpec:
    return parse_spec({"name": "f", "model": {"source": "m.onnx"}, "batch": batch}, Path("."))


def test_batch_table_defaults_and_refusals() -> None:
    spec = spec_with({"input": "s3://in-bucket/daily/", "output": "s3://in-bucket/scores/"})
    batch = spec.batch
    assert batch is not None
    assert (batch.items_per_batch, batch.tolerated_failure_percentage, batch.max_concurrency) == (10, 0.0, 100)
    assert batch.schedule is None and batch.tasks == 10
    assert parse_spec({"name": "f", "model": {"source": "m.onnx"}}, Path(".")).batch is None
    cases = {
        "lies under input": {"input": "s3://b/in/", "output": "s3://b/in/out/"},
        "batch.input: must be matching": {"input": "/data", "output": "s3://b/out/"},
        "batch.output: required field is missing": {"input": "s3://b/in/"},
        "not five cron fields": {"input": "s3://b/in/", "output": "s3://b/out/", "schedule": "cron(0 2 * * ? *)"},
        "both the day of the month and the day of the week": {
            "input": "gs://b/in/",
            "output": "gs://b/out/",
            "schedule": "0 2 1 * 1",
        },
        "batch.tolerated_failure_percentage: must be <= 100": {
            "input": "s3://b/in/",
            "output": "s3://b/out/",
            "tolerated_failure_percentage": 150,
        },
    }
    for expected, table in cases.items():
        with pytest.raises(SpecError, match=expected):
            spec_with(table)


@pytest.mark.parametrize(
    ("unix", "eventbridge"),
    [
        ("0 2 * * *", "cron(0 2 * * ? *)"),
        ("30 6 * * 1-5", "cron(30 6 ? * 2-6 *)"),
        ("0 0 * * 0,6", "cron(0 0 ? * 1,7 *)"),
        ("0 0 * * 7", "cron(0 0 ? * 1 *)"),
        ("15 */4 1 * *", "cron(15 */4 1 * ? *)"),
        ("0 3 * * MON-FRI", "cron(0 3 ? * MON-FRI *)"),
        ("0 3 * * 1/2", "cron(0 3 ? * 2/2 *)"),
    ],
)
def test_a_unix_cron_is_spelt_for_eventbridge(unix: str, eventbridge: str) -> None:
    assert cron.problems(unix) == []
    assert cron.eventbridge(unix) == eventbridge


def test_on_aws_keeps_to_the_prefixes_the_deployed_map_may_reach() -> None:
    from modelfn.batch.aws import start

    spec = spec_with({"input": "s3://in-bucket/daily/", "output": "s3://out-bucket/scores/"})
    with pytest.raises(BadRequest, match="reads only below"):
        start(spec, "s3://in-bucket/other/", "s3://out-bucket/scores/", "arn:aws:states:::x", None)
    with pytest.raises(BadRequest, match="writes only below"):
        start(spec, "s3://in-bucket/daily/eu", "s3://out-bucket/else/", "arn:aws:states:::x", None)
    assert spec_with({"input": "s3://b/in/", "output": "s3://c/out/", "results_prefix": "in/runs/"}).batch
    with pytest.raises(SpecError, match=r"batch\.results_prefix: 'in/runs/' lies under the input prefix"):
        spec_with({"input": "s3://b/in/", "output": "s3://b/out/", "results_prefix": "in/runs/"})
