"""Load and soak on the local server, loopback only: N requests at concurrency C per function
(breast-cancer, then sentence-embed when its model is built), each function on its own
`modelfn serve` started here on a free 127.0.0.1 port. Prints per function: requests, errors
(non-200, transport errors, timeouts, wrong answers), throughput, p50/p99 latency and the
server's resident memory after warm-up and at the end. Bounded in count and time; exits 1
when a function had errors or grew more than 10% in memory.

    python bench/load.py [--requests 20000] [--concurrency 64] [--client raw|httpx]

The default client is a raw asyncio HTTP/1.1 keep-alive client on uvloop: the machine's
cores are shared by client and server, so every microsecond the client spends is one the
server does not get (`--client httpx` measures the difference; see the README's "Under load, faults and access").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
GROWTH_LIMIT_PCT = 10.0

SUBJECTS = ["A man", "The old dog", "Serverless functions", "A small model behind an API", "The weather", "My cat"]
VERBS = ["is playing", "scales to zero", "answers quickly", "was measured", "sleeps"]
OBJECTS = [
    "on the windowsill.",
    "when nobody calls it, and a cold start is the price of that.",
    "in the garden.",
    "under sixty-four concurrent clients on two cores.",
]


@dataclass
class Workload:
    """The request bodies for one function and a check that an answer is the right one for its body."""

    name: str
    bodies: list[bytes]
    check: Callable[[bytes, Any], bool]
    expected: list[Any] = field(default_factory=list)


def cancer_workload() -> Workload:
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data.astype(np.float32)
    bodies = [json.dumps({"X": row.tolist()}).encode() for row in rows]

    def check(answer: bytes, expected: Any) -> bool:
        got = json.loads(answer)
        return bool(got["label"] == expected["label"] and np.allclose(got["probabilities"], expected["probabilities"]))

    return Workload("breast-cancer", bodies, check)


def embed_workload() -> Workload:
    # sentences of different lengths: merged requests are padded, which must not change anyone's answer
    texts = [f"{s} {v} {o}" for s in SUBJECTS for v in VERBS for o in OBJECTS]
    bodies = [json.dumps({"text": t}).encode() for t in texts]

    def check(answer: bytes, expected: Any) -> bool:
        got = np.asarray(json.loads(answer)["embedding"], dtype=np.float32)
        return got.shape == expected.shape and float(got @ expected) > 0.999

    return Workload("sentence-embed", bodies, check)


def embed_missing() -> str | None:
    folder = FUNCTIONS / "sentence-embed"
    if not (folder / "model.onnx").is_file() or not (folder / "tokenizer.json").is_file():
        return "functions/sentence-embed/model.onnx is not built (python functions/sentence-embed/build.py)"
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return "the tokenizers package is not installed"
    return None


# --- the server under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`modelfn serve NAME` in a subprocess, on loopback, with its own model cache and log file."""

    def __init__(self, name: str, functions: Path = FUNCTIONS) -> None:
        self.name = name
        self.port = free_port()
        self.scratch = Path(tempfile.mkdtemp(prefix="modelfn-load-"))
        self.log = (self.scratch / "server.log").open("w+b")
        env = {**os.environ, "MODELFN_CACHE_DIR": str(self.scratch / "cache")}
        env.pop("MODELFN_API_KEY", None)
        command = [sys.executable, "-m", "modelfn.cli", "--functions-dir", str(functions), "serve", name]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, limit_s: float = 180) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"the server for {self.name} did not become ready:\n{tail}")

    def rss_kb(self) -> int:
        """Resident memory of the server process now (VmRSS), in kB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


# --- clients: one coroutine per connection, each `send(index)` returns (status, body)


class RawConnection:
    """HTTP/1.1 keep-alive over one asyncio stream, the request bytes built once per body.
    Only what uvicorn answers is understood: a status line, headers and a Content-Length body."""

    def __init__(self, host: str, port: int, path: str, bodies: list[bytes]) -> None:
        self.host, self.port = host, port
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        self.requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, index: int) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.requests[index % len(self.requests)])
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        at = head.lower().find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError("an answer without Content-Length")
        length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
        return status, await self.reader.readexactly(length)

    def abort(self) -> None:
        """Drop the connection (after an error or a timeout); the next send opens a new one."""
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(
    port: int, path: str, bodies: list[bytes], requests: int, concurrency: int
) -> tuple[float, list[float]]:
    """Requests/s and every latency (sorted), `concurrency` raw keep-alive connections each
    with one request in flight; any answer but 200 stops the run."""
    latencies: list[float] = []
    sent = iter(range(requests))

    async def worker() -> None:
        connection = RawConnection("127.0.0.1", port, path, bodies)
        try:
            for index in sent:
                started = time.perf_counter()
                status, _ = await connection.send(index)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"status {status}")
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started), sorted(latencies)


class PeerProcess(ServerProcess):
    """A hand-written ASGI app under uvicorn (`source`: the text of its module, which defines
    `app`), with ServerProcess's readiness and stop: the peers the server benches measure
    modelfn against."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.port = free_port()
        self.scratch = Path(tempfile.mkdtemp(prefix="modelfn-peer-"))
        (self.scratch / "peer.py").write_text(source)
        self.log = (self.scratch / "server.log").open("w+b")
        command = [sys.executable, "-m", "uvicorn", "peer:app", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "warning", "--no-access-log"]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.scratch)


WRK_SCRIPT = """
local bodies = {%s}
local next_body = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  next_body = next_body %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format('WRK {"requests": %%d, "seconds": %%f, "non_200": %%d, "socket_errors": %%d, '
    .. '"p50_ms": %%f, "p99_ms": %%f}\\n', summary.requests, summary.duration / 1e6, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk_load(
    port: int, path: str, bodies: list[bytes], seconds: int, concurrency: int, threads: int = 1
) -> dict[str, float]:
    """Requests/s and latency from `wrk` (Debian's `wrk` package), `threads` threads, `concurrency`
    keep-alive connections. A C client: at the same load it takes a fraction of the CPU the
    raw Python client does, so more of two shared cores is left to the server. It checks only
    statuses (any non-200 or socket error stops the bench); the raw client checks every answer."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or use the raw client)")
    quoted = ", ".join("[==[" + body.decode() + "]==]" for body in bodies)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % quoted)
    try:
        command = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", script.name]
        done = subprocess.run([*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    finally:
        os.unlink(script.name)
    line = next((row for row in done.stdout.splitlines() if row.startswith("WRK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    figures: dict[str, float] = json.loads(line[4:])
    if figures["non_200"] or figures["socket_errors"]:
        raise RuntimeError(f"wrk saw errors: {figures}")
    figures["per_second"] = figures["requests"] / figures["seconds"]
    return figures


class HttpxConnection:
    """The same through httpx (HTTP/1.1), sharing one pool of `concurrency` connections."""

    def __init__(self, client: Any, url: str, bodies: list[bytes]) -> None:
        self.client, self.url, self.bodies = client, url, bodies

    async def send(self, index: int) -> tuple[int, bytes]:
        body = self.bodies[index % len(self.bodies)]
        response = await self.client.post(self.url, content=body, headers={"content-type": "application/json"})
        return response.status_code, response.content

    def abort(self) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass
class Phase:
    requests: int = 0
    errors: int = 0
    wrong: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None
    stopped_early: bool = False

    def fail(self, why: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or why


async def drive(
    connections: list[Any], work: Workload, total: int, timeout_s: float, deadline: float, check: bool
) -> Phase:
    """Send `total` requests over the connections, each connection one at a time; a watchdog
    drops a connection whose request has waited longer than `timeout_s` (cheaper than a
    `wait_for` task per request)."""
    phase = Phase()
    next_index = 0
    started_at = [0.0] * len(connections)
    clock = time.perf_counter

    async def worker(slot: int, connection: Any) -> None:
        nonlocal next_index
        while next_index < total and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            started = started_at[slot] = clock()
            try:
                status, body = await connection.send(index)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                phase.requests += 1
                phase.fail(f"{type(exc).__name__}: {exc}" if started_at[slot] else f"timed out after {timeout_s} s")
                connection.abort()
                started_at[slot] = 0.0
                continue
            except Exception as exc:  # httpx's own errors
                phase.requests += 1
                phase.fail(f"{type(exc).__name__}: {exc}")
                continue
            started_at[slot] = 0.0
            phase.latencies_ms.append((clock() - started) * 1000)
            phase.requests += 1
            if status != 200:
                phase.fail(f"status {status}: {body[:200]!r}")
            elif check and not work.check(body, work.expected[index % len(work.bodies)]):
                phase.wrong += 1
                phase.fail(f"a wrong answer for body {index % len(work.bodies)}")

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(0.5)
            now = clock()
            for slot, started in enumerate(started_at):
                if started and now - started > timeout_s:
                    started_at[slot] = 0.0  # tells the worker its error is a timeout
                    connections[slot].abort()

    watching = asyncio.get_running_loop().create_task(watchdog())
    began = clock()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(connections)))
    phase.seconds = clock() - began
    watching.cancel()
    phase.stopped_early = phase.requests < total
    return phase


async def expected_answers(connection: Any, work: Workload) -> None:
    """Each distinct body once, alone (so never merged with another): the reference answers."""
    for index in range(len(work.bodies)):
        status, body = await connection.send(index)
        if status != 200:
            raise RuntimeError(f"{work.name}: body {index} answered {status}: {body[:300]!r}")
        parsed = json.loads(body)
        work.expected.append(np.asarray(parsed["embedding"], np.float32) if "embedding" in parsed else parsed)


@dataclass
class Report:
    name: str
    client: str
    concurrency: int
    warmup: Phase
    measured: Phase
    rss_warm_kb: int
    rss_end_kb: int
    server_cpu_s: float
    client_cpu_s: float

    @property
    def growth_pct(self) -> float:
        return (self.rss_end_kb - self.rss_warm_kb) / self.rss_warm_kb * 100

    @property
    def ok(self) -> bool:
        m = self.measured
        return m.errors == 0 and self.warmup.errors == 0 and not m.stopped_early and self.growth_pct < GROWTH_LIMIT_PCT

    def lines(self) -> list[str]:
        m = self.measured
        p50, p99 = np.percentile(m.latencies_ms, [50, 99]) if m.latencies_ms else (float("nan"), float("nan"))
        lines = [
            f"{self.name}  (client {self.client}, concurrency {self.concurrency})",
            f"  requests      {m.requests}  (after {self.warmup.requests} warm-up requests)"
            + ("  STOPPED AT THE TIME BOUND" if m.stopped_early else ""),
            f"  errors        {m.errors}  (wrong answers {m.wrong}; warm-up errors {self.warmup.errors})",
            f"  throughput    {m.requests / m.seconds:.1f} requests/s over {m.seconds:.1f} s",
            f"  latency       p50 {p50:.2f} ms   p99 {p99:.2f} ms   max {max(m.latencies_ms, default=0):.2f} ms",
            f"  server RSS    {self.rss_warm_kb / 1024:.1f} MiB after warm-up, {self.rss_end_kb / 1024:.1f} MiB at the "
            f"end: {self.growth_pct:+.2f}% (limit {GROWTH_LIMIT_PCT:.0f}%)",
            f"  CPU           server {self.server_cpu_s:.1f} s, client {self.client_cpu_s:.1f} s",
        ]
        if m.first_error or self.warmup.first_error:
            lines.append(f"  first error   {m.first_error or self.warmup.first_error}")
        return lines


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load(server: ServerProcess, work: Workload, args: argparse.Namespace) -> Report:
    path = f"/functions/{work.name}"
    httpx_client = None
    if args.client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        httpx_client = httpx.AsyncClient(timeout=args.timeout, limits=limits)
        connections: list[Any] = [
            HttpxConnection(httpx_client, server.base + path, work.bodies) for _ in range(args.concurrency)
        ]
    else:
        connections = [RawConnection("127.0.0.1", server.port, path, work.bodies) for _ in range(args.concurrency)]
    try:
        await expected_answers(connections[0], work)
        deadline = time.monotonic() + args.max_seconds
        warmup = await drive(connections, work, args.warmup, args.timeout, deadline, check=True)
        rss_warm = server.rss_kb()
        cpu_server, cpu_client = server.cpu_s(), _client_cpu()
        measured = await drive(connections, work, args.requests, args.timeout, deadline, check=not args.no_check)
        return Report(
            work.name,
            args.client,
            args.concurrency,
            warmup,
            measured,
            rss_warm,
            server.rss_kb(),
            server.cpu_s() - cpu_server,
            _client_cpu() - cpu_client,
        )
    finally:
        for connection in connections:
            await connection.close()
        if httpx_client is not None:
            await httpx_client.aclose()


def run_loop(coroutine: Coroutine[Any, Any, Report]) -> Report:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests per function")
    parser.add_argument("--concurrency", type=int, default=64, help="connections, each with one request in flight")
    parser.add_argument("--warmup", type=int, default=2_000, help="requests before the first memory reading")
    parser.add_argument("--functions", nargs="+", default=["breast-cancer", "sentence-embed"])
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before one request counts as failed")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="time bound per function")
    parser.add_argument("--no-check", action="store_true", help="check statuses only, not that each answer is right")
    args = parser.parse_args(argv)

    workloads = {"breast-cancer": cancer_workload, "sentence-embed": embed_workload}
    reports: list[Report] = []
    for name in args.functions:
        if name == "sentence-embed" and (why := embed_missing()):
            print(f"sentence-embed skipped: {why}\n", flush=True)
            continue
        work = workloads[name]()
        server = ServerProcess(name)
        try:
            server.wait_ready()
            report = run_loop(load(server, work, args))
        finally:
            server.stop()
        print("\n".join(report.lines()) + "\n", flush=True)
        reports.append(report)
    failed = [r.name for r in reports if not r.ok]
    print(f"load: {'FAILED for ' + ', '.join(failed) if failed else 'every function passed'}", flush=True)
    return 1 if failed or not reports else 0


if __name__ == "__main__":
    sys.exit(main())
