"""The event rules every storage and message adapter shares (`modelfn.events`)."""

from __future__ import annotations

import pytest

from modelfn import events
from modelfn.errors import BadRequest, InvalidInput, ModelUnavailable, NotFound


@pytest.mark.parametrize(
    ("name", "declared", "data", "expected"),
    [
        ("incoming/a.json", None, b"{}", "application/json"),
        ("incoming/a.png", "binary/octet-stream", b"", "image/png"),
        ("incoming/a.jpg", "application/octet-stream", b"", "image/jpeg"),
        ("incoming/a.txt", "", b"", "text/plain"),
        ("incoming/a", None, b"\x89PNG\r\n\x1a\n....", "image/png"),
        ("incoming/a", None, b"  [1, 2]", "application/json"),
        ("incoming/a", None, b"\x00\x01", None),
        ("incoming/a.json", "text/plain; charset=utf-8", b"{}", "text/plain; charset=utf-8"),
        ("incoming/a.bin", "image/png", b"", "image/png"),
    ],
)
def test_content_type_is_the_declared_one_else_the_extension_else_the_first_bytes(
    name: str, declared: str | None, data: bytes, expected: str | None
) -> None:
    assert events.content_type(name, declared, data) == expected


def test_result_names_keep_the_path_below_the_input_prefix() -> None:
    assert events.result_name("incoming/a/b.png", "incoming/", "predictions/") == "predictions/a/b.png.json"
    assert events.result_name("elsewhere/x.json", "incoming/", "out/") == "out/elsewhere/x.json.json"
    assert events.result_name("x.json", "", "") == "x.json.json"


@pytest.mark.parametrize(
    ("name", "options", "reason"),
    [
        ("predictions/a.json.json", {"output_prefix": "predictions/"}, "under the output prefix"),
        ("incoming/a.json", {"metadata": {events.OUTPUT_MARK: "cancer"}}, "a result written by 'cancer'"),
        ("elsewhere/a.json", {"prefix": "incoming/"}, "outside the input prefix 'incoming/'"),
        ("incoming/folder/", {"prefix": "incoming/"}, "a folder placeholder"),
        ("predictions/a.json", {"output_prefix": "predictions/", "same_place": False}, None),
        ("incoming/a.json", {"prefix": "incoming/", "output_prefix": "predictions/"}, None),
    ],
)
def test_results_and_objects_outside_the_prefix_are_skipped(name: str, options: dict, reason: str | None) -> None:
    found = events.skip_reason(name, **options)
    assert (found is None) if reason is None else (reason in str(found))


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (ModelUnavailable("not loaded"), True),
        (events.Retryable("publish failed"), True),
        (ConnectionError("reset"), True),
        (BadRequest("malformed JSON"), False),
        (InvalidInput("wrong shape"), False),
        (NotFound("unknown function"), False),
        (LookupError("object gone"), False),
    ],
)
def test_only_failures_another_try_may_mend_are_retried(error: BaseException, retry: bool) -> None:
    assert events.retryable(error) is retry


def test_a_batch_runs_every_item_and_names_each_failure() -> None:
    class Failed(events.BatchFailed):
        pass

    seen: list[tuple[str, str]] = []
    batch = events.Batch("message", 3, Failed)
    results = [
        batch.run("a", lambda: 1),
        batch.run("b", lambda: int("x"), lambda item, why: seen.append((item, why))),
        batch.run(
            "c", lambda: (_ for _ in ()).throw(InvalidInput("too short")), lambda item, why: seen.append((item, why))
        ),
    ]
    assert results == [1, None, None]
    assert seen == [("b", "ValueError: invalid literal for int() with base 10: 'x'"), ("c", "too short")]
    with pytest.raises(Failed, match=r"^2 of 3 message\(s\) failed: b \(ValueError: .*\); c \(too short\)$"):
        batch.raise_if_failed()


def test_results_are_compact_json_and_nan_is_refused() -> None:
    assert events.encode_result({"label": [1], "p": [0.5]}) == b'{"label":[1],"p":[0.5]}'
    with pytest.raises(ValueError):
        events.encode_result({"p": float("nan")})
