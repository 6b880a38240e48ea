"""How requests call ONNX Runtime: `modelfn.session.runner`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx_models import multi_io, save

from modelfn.session import create_session, runner
from modelfn.spec import RuntimeSpec


def test_the_runner_answers_as_session_run_does_and_refuses_what_it_refuses(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(save(multi_io(), tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    feeds = {
        "a": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
        "b": np.array([[0.5, 0.5], [1.0, -1.0]], dtype=np.float32),
        "scale": np.array(2.0, dtype=np.float32),
    }
    run = runner(session)
    for got, expected in zip(run(["sum", "diff"], feeds), session.run(["sum", "diff"], feeds), strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(run(["diff"], feeds)[0], [[0.5, 1.5], [2.0, 5.0]])
    with pytest.raises(Exception, match="scale"):  # ONNX Runtime's own refusal, past the wrapper's check
        run(["sum"], {"a": feeds["a"], "b": feeds["b"]})


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_pool_threads_stop_spinning_when_the_last_run_returns(tmp_path: Path, threads: int) -> None:
    session = create_session(save(multi_io(), tmp_path / "m.onnx"), RuntimeSpec(threads=threads))
    options = session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.intra_op_num_threads == threads
    feeds = {"a": np.ones((2, 2), np.float32), "b": np.ones((2, 2), np.float32), "scale": np.array(3.0, np.float32)}
    np.testing.assert_array_equal(session.run(["sum"], feeds)[0], np.full((2, 2), 6.0))


class Noted:
    """Stands in for a session's `run` (the wrapper's or the core's beneath it): notes each call."""

    def __init__(self, name: str, calls: list[tuple[str, bool]]) -> None:
        self.name, self.calls = name, calls

    def run(self, names: list[str], feeds: dict[str, Any], options: Any = None) -> list[Any]:
        self.calls.append((self.name, isinstance(options, ort.RunOptions)))
        return [names]


class OnProviders(Noted):
    """Stands in for a session on `providers` (this machine cannot make a CUDA one)."""

    def __init__(self, providers: list[str], calls: list[tuple[str, bool]]) -> None:
        super().__init__("wrapper", calls)
        self.providers = providers
        self._sess = Noted("core", calls)

    def get_providers(self) -> list[str]:
        return self.providers


def test_a_session_on_another_provider_keeps_the_wrapper_that_falls_back_to_the_cpu() -> None:
    calls: list[tuple[str, bool]] = []
    for providers in (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]):
        run = runner(OnProviders(providers, calls))  # type: ignore[arg-type]
        assert run(["y"], {}) == [["y"]]
    assert calls == [("wrapper", True), ("core", True)]
