"""The README walked as a new user walks it: its `modelfn` commands and its curl example, in
order, on a fresh copy of the repository, each answer checked against the one the README shows.

What counts, read from README.md's sh/bash code blocks (a block right after an HTML comment
`<!-- not run by tests/test_readme.py: why -->` is left out):
- `$ modelfn ...`: the lines after it, up to the next `$`, are its output;
- `modelfn ...` or `curl ... localhost:8080`: an inline `# {...}` comment, or `# ...` lines right
  below it, are its output. Everything else (make, npx, other servers) is not run here.
`...` and `…` stand for anything; spaces do not count inside JSON."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from live_server import wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NOT_RUN = "<!-- not run by tests/test_readme.py"
SERVE = "modelfn serve breast-cancer"  # what `make serve` runs


@dataclass
class Step:
    words: list[str]
    line: int
    output: list[str] = field(default_factory=list)  # lines shown after a `$` command
    comments: list[str] = field(default_factory=list)  # `# ...` answers

    @property
    def env(self) -> dict[str, str]:
        return dict(w.split("=", 1) for w in self.words[: self.start])

    @property
    def start(self) -> int:
        return next(i for i, w in enumerate(self.words) if not re.fullmatch(r"[A-Z_]+=\S*", w))

    @property
    def argv(self) -> list[str]:
        return self.words[self.start :]


def _split_comment(line: str) -> tuple[str, str]:
    """A shell line and its trailing comment (a `#` after a space, outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line, ""


def _runnable(words: list[str]) -> bool:
    argv = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    return bool(argv) and (argv[0] == "modelfn" or (argv[0] == "curl" and any("localhost:8080" in w for w in argv)))


def readme_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        fence = lines[number]
        number += 1
        if not fence.startswith("```"):
            continue
        skipped = fence[3:].strip() not in ("", "sh", "bash") or lines[number - 2].startswith(NOT_RUN)
        block: list[tuple[int, str]] = []
        while not lines[number].startswith("```"):
            block.append((number + 1, lines[number]))
            number += 1
        number += 1
        if skipped:
            continue
        current: Step | None = None
        prompt = False
        pending = ""
        for line_number, raw in block:
            if pending:
                raw, pending = pending + " " + raw.strip(), ""
            if raw.rstrip().endswith("\\"):
                pending = raw.rstrip()[:-1]
                continue
            if raw.startswith("$ "):
                current, prompt = Step(shlex.split(raw[2:]), line_number), True
                steps.append(current)
            elif prompt and current is not None:
                current.output.append(raw)
            elif raw.startswith("#"):
                if current is not None:
                    current.comments.append(raw[1:].strip())
            else:
                command, comment = _split_comment(raw)
                words = shlex.split(command)
                current = Step(words, line_number) if words and _runnable(words) else None
                if current is not None:
                    steps.append(current)
                    if comment[:1] in ("{", '"', "["):
                        current.comments.append(comment[: max(comment.rfind(c) for c in '}]"') + 1])
    return steps


def _pattern(expected: str) -> str:
    return ".*?".join(re.escape(part) for part in re.split(r" ?(?:\.\.\.|…)", expected))


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def check_answer(step: Step, actual: str) -> None:
    where = f"README.md line {step.line}: {shlex.join(step.words)}"
    lines = [_collapse(line) for line in actual.splitlines()]
    shown = [*step.output, *(c for c in step.comments if c[:1] not in '{"[')]
    at = 0
    for expected in shown:
        if expected.strip() in ("", "...", "…"):
            continue
        pattern = _pattern(_collapse(expected))
        found = next((i for i in range(at, len(lines)) if re.fullmatch(pattern, lines[i])), None)
        assert found is not None, f"{where}: no line like {expected!r} in\n{actual}"
        at = found + 1
    for expected in (c for c in step.comments if c[:1] in '{"['):
        assert re.search(_pattern(_squash(expected)), _squash(actual)), f"{where}: expected {expected}, got\n{actual}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_copy(target: Path) -> Path:
    """The files a clone would have: tracked and new, not ignored (no built models, no .venv)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def curl(words: list[str], port: int) -> str:
    method, headers, data, url = "GET", {}, None, ""
    args = iter(words[1:])
    for word in args:
        if word.startswith("-X"):
            method = word[2:] or next(args)
        elif word == "-H":
            key, value = next(args).split(":", 1)
            headers[key.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-binary"):
            data, method = next(args), "POST" if method == "GET" else method
        elif "localhost:8080" in word:
            url = "http://" + word.split("://")[-1].replace("localhost:8080", f"127.0.0.1:{port}")
    return httpx.request(method, url, headers=headers, content=data).text


def test_the_readme_parses_into_the_steps_a_new_user_takes() -> None:
    steps = readme_steps((ROOT / "README.md").read_text())
    commands = [shlex.join(s.argv[:3]) for s in steps]
    assert commands[:4] == [
        "curl -s -XPOST",
        "modelfn list",
        "modelfn check breast-cancer",
        "modelfn invoke breast-cancer",
    ]
    assert "modelfn invoke breast-cancer" in commands and not any("layer build" in c for c in commands)
    assert all(s.output or s.comments for s in steps if s.argv[0] == "curl")
    assert f"$(BIN)/{SERVE}" in (ROOT / "Makefile").read_text()


@pytest.mark.slow
def test_every_readme_command_answers_as_the_readme_shows(tmp_path: Path) -> None:
    repo = fresh_copy(tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODELFN_"))}
    env.update(
        {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(repo), "HOME": str(home)},
        MODELFN_CACHE_DIR=str(tmp_path / "cache"),
    )
    server: subprocess.Popen[str] | None = None
    port = _free_port()
    try:
        for step in readme_steps((repo / "README.md").read_text()):
            if step.argv[0] == "curl":
                if server is None:
                    server = subprocess.Popen(
                        [*shlex.split(SERVE), "--port", str(port)], cwd=repo, env=env, stderr=subprocess.PIPE, text=True
                    )
                    wait_until_ready(f"http://127.0.0.1:{port}", server)
                check_answer(step, curl(step.argv, port))
                continue
            result = subprocess.run(
                step.argv, cwd=repo, env={**env, **step.env}, capture_output=True, text=True, timeout=300
            )
            assert result.returncode == 0, f"README.md line {step.line}: {shlex.join(step.words)}\n{result.stderr}"
            assert "Traceback" not in result.stderr and "[E:onnxruntime" not in result.stderr, result.stderr
            check_answer(step, result.stdout)
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=30)
