"""Server throughput of sentence-embed under concurrent single-sentence requests, as a
ratio to offline `session.run` measured just before it (budget >= 0.9): at batch 32 for
concurrency above 1, at batch 1 for concurrency 1; with wrk also p50 and p99 per round
(budget: p99 <= 1.5x p50), and the best round of each against the best of its floors.
Three servers, started once and warmed: modelfn with micro-batching on and off, and a peer, a
plain ASGI `async def` that tokenises and calls `session.run` on the event loop (what uvicorn,
loopback and the client cost at the least: at concurrency 1 it is the ceiling of any server
on uvicorn). Each round measures each server, the first in turn, each right after its own
offline floor, so machine load hits both sides of a ratio alike; medians and minimums over the
rounds. Loopback only; asserts nothing.

    python bench/server_throughput.py [--requests 1024] [--concurrency 32] [--rounds 3] [--client wrk|raw]

The load comes from `wrk` where it is installed (`apt-get install wrk`; a C client, so more
of two shared cores is left to the server), else from the raw Python client, which also
checks every answer; `--client raw` picks it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from load import PeerProcess, RawConnection, ServerProcess, wrk_load

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = ROOT / "functions" / "sentence-embed"
PATH = "/functions/sentence-embed"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A model behind an API in minutes.",
    "Serverless functions scale to zero when idle.",
    "ONNX Runtime runs the same graph on every cloud.",
    "Cold starts matter for latency-sensitive endpoints.",
    "Micro-batching merges concurrent requests into one run.",
    "Each caller gets exactly its own rows back.",
    "The weather is lovely today.",
    "Sentence embeddings map text to vectors.",
    "Cosine similarity compares two embeddings.",
    "Provisioned concurrency keeps instances warm.",
    "SnapStart restores a snapshot of an initialised function.",
    "GPU models go to container-based serverless.",
    "Pub/Sub delivers messages to push endpoints.",
    "An S3 object that cannot be processed is reported.",
    "Throughput is measured, never assumed.",
]
BODIES = [json.dumps({"text": s}).encode() for s in SENTENCES]
"""The requests every server here is sent, the sentences in turn."""


def offline(batch: int, rounds: int) -> float:
    """Sentences per second of plain session.run at `batch`, the same tokenizer and threads."""
    sys.path.insert(0, str(FUNCTION))
    import hooks  # type: ignore[import-not-found]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    session = ort.InferenceSession(str(FUNCTION / "model.onnx"), options, providers=["CPUExecutionProvider"])
    # the sentences in turn, as the load sends them: at batch 1 each length is its own shape
    # (one sentence over and over ran 5-14 % faster than the 16 in turn)
    batches = [[SENTENCES[(r * batch + i) % len(SENTENCES)] for i in range(batch)] for r in range(len(SENTENCES))]
    for texts in batches[: max(1, len(SENTENCES) // batch)]:  # each shape once, as the server's warm-up did
        session.run(None, hooks.tokenize(texts))
    started = time.perf_counter()
    for r in range(rounds):
        session.run(None, hooks.tokenize(batches[r % len(batches)]))
    return batch * rounds / (time.perf_counter() - started)


def _functions_dir(batching: bool, max_batch: int | None = None, gpu: bool = False) -> Path:
    """A copy of the function folder (the model hard-linked where the file system allows: a
    symbolic link out of the folder is refused, as any model outside its function's folder is)
    with batching on or off."""
    root = Path(tempfile.mkdtemp(prefix="modelfn-bench-"))
    folder = root / "sentence-embed"
    folder.mkdir()
    for name in ("hooks.py", "tokenizer.json"):
        shutil.copy(FUNCTION / name, folder / name)
    try:
        os.link(FUNCTION / "model.onnx", folder / "model.onnx")
    except OSError:
        shutil.copy(FUNCTION / "model.onnx", folder / "model.onnx")
    toml = (FUNCTION / "function.toml").read_text()
    if not batching:
        toml = toml.replace("[batching]\n", "[batching]\nenabled = false\n")
    if max_batch is not None:
        toml = toml.replace("max_batch_size = 32", f"max_batch_size = {max_batch}")
    if gpu:
        toml = toml.replace("[runtime]\n", '[runtime]\naccelerator = "gpu"\n')
    (folder / "function.toml").write_text(toml)
    return root


PEER = """
import sys

sys.path.insert(0, {folder!r})
import hooks
import onnxruntime as ort
import orjson

session = ort.InferenceSession({model!r}, providers=["CPUExecutionProvider"])  # ONNX Runtime's defaults, as offline
HEADERS = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    if scope["method"] == "GET":  # the readiness probe
        answer = b'{{"ready":true}}'
    else:
        embedding = session.run(None, hooks.tokenize([orjson.loads(body)["text"]]))[0]
        answer = orjson.dumps({{"embedding": embedding[0].tolist()}})
    headers = HEADERS + [(b"content-length", str(len(answer)).encode())]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": answer}})
"""


async def _load(port: int, requests: int, concurrency: int) -> float:
    """Requests per second from `concurrency` keep-alive connections of the raw client in
    bench/load.py: with two cores shared, a heavier client would slow the server it measures."""
    connections = [RawConnection("127.0.0.1", port, PATH, BODIES) for _ in range(concurrency)]
    for index, connection in enumerate(connections):  # open connections, warm the batcher
        status, _ = await connection.send(index)
        assert status == 200
    sent = iter(range(requests))

    async def worker(connection: RawConnection) -> None:
        for index in sent:
            status, body = await connection.send(index)
            if status != 200:
                raise RuntimeError(f"status {status}: {body[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        await connection.close()
    return requests / elapsed


SERVERS = {"on": "modelfn, batching on", "off": "modelfn, batching off", "peer": "peer (plain async def)"}
LATENCY: dict[str, list[tuple[float, float]]] = {name: [] for name in SERVERS}  # (p50, p99) in ms, from wrk


def start_servers() -> tuple[dict[str, ServerProcess], list[Path]]:
    """The three servers, started once and warmed (every sentence's shape once): they then take
    their turns round by round, idle while the others are measured. If one fails to start, those
    already started are stopped before the error goes on."""
    folders = [_functions_dir(True), _functions_dir(False)]
    servers: dict[str, ServerProcess] = {}
    try:
        servers["on"] = ServerProcess("sentence-embed", folders[0])
        servers["off"] = ServerProcess("sentence-embed", folders[1])
        servers["peer"] = PeerProcess("peer", PEER.format(folder=str(FUNCTION), model=str(FUNCTION / "model.onnx")))
        for server in servers.values():
            server.wait_ready()
            for body in BODIES:
                request = urllib.request.Request(server.base + PATH, body, {"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    assert "embedding" in json.load(response)
    except BaseException:
        stop_servers(servers, folders)
        raise
    return servers, folders


def stop_servers(servers: dict[str, ServerProcess], folders: list[Path]) -> None:
    for server in servers.values():
        server.stop()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def served(server: ServerProcess, name: str, requests: int, concurrency: int, client: str = "raw") -> float:
    if client == "raw":
        return asyncio.run(_load(server.port, requests, concurrency))
    # wrk stops with its last requests unanswered: let the server finish that batch, or the
    # measured run's first requests queue behind it (at 3 s of c=32 that alone is 2-3 % of
    # the requests, so p99 would measure the seam between the two wrk runs)
    wrk_load(server.port, PATH, BODIES, 1, concurrency)  # warm the connections and the batcher
    time.sleep(0.5)
    seconds = max(2, round(requests / 400))  # about as long as the raw client's run at this size
    figures = wrk_load(server.port, PATH, BODIES, seconds, concurrency)
    LATENCY[name].append((figures["p50_ms"], figures["p99_ms"]))
    return figures["per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=["wrk", "raw"], default="wrk" if shutil.which("wrk") else "raw")
    args = parser.parse_args()
    if not (FUNCTION / "model.onnx").exists():
        raise SystemExit("build the model first: python functions/sentence-embed/build.py")

    batch = 1 if args.concurrency == 1 else 32
    # as many runs as the server answers requests when batch 1 is the floor: a 64-run floor
    # (0.2 s) moved with every burst of machine load, the ratio with it
    runs = args.requests if batch == 1 else max(4, args.requests // 32)
    # Each server's floor is measured just before it, seconds apart: this machine's speed moves
    # between two levels (sentence-embed's batch 32 at 450 or 540/s offline, the server with it)
    # every few tens of seconds, so a floor measured at the start of a round could be measured at
    # the other level than a server at its end.
    figures: dict[str, list[float]] = {name: [] for name in SERVERS}
    floors: dict[str, list[float]] = {name: [] for name in SERVERS}
    servers, folders = start_servers()
    try:
        for round_ in range(args.rounds):
            names = list(SERVERS)
            for name in names[round_ % 3 :] + names[: round_ % 3]:  # each server first in turn
                floors[name].append(offline(batch, runs))
                figures[name].append(served(servers[name], name, args.requests, args.concurrency, args.client))
    finally:
        stop_servers(servers, folders)
    floor = f"offline batch {batch}"
    print(f"sentence-embed, c={args.concurrency}, {args.requests} requests, {args.rounds} rounds, client {args.client}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':40} {'per round':>30} {'median':>8}")
    for name, label in SERVERS.items():
        for row, values in ((f"{floor} session.run, before it", floors[name]), (label, figures[name])):
            rounds = " ".join(f"{v:7.1f}" for v in values)
            print(f"{row:40} {rounds:>30} {statistics.median(values):8.1f}  /s")
    for name, label in SERVERS.items():
        ratios = [v / base for v, base in zip(figures[name], floors[name], strict=True)]
        print(
            f"{label} to {floor}: median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, "
            f"per round {' '.join(f'{r:.2f}' for r in ratios)}" + ("  (budget >= 0.90)" if name == "on" else "")
        )
        # the best round of each is the least disturbed by other load on a shared machine
        print(f"  best round against the best floor: {max(figures[name]) / max(floors[name]):.2f}")
    against = [on / peer for on, peer in zip(figures["on"], figures["peer"], strict=True)]
    print(
        f"modelfn (batching on) to the peer: median {statistics.median(against):.2f}, per round "
        + " ".join(f"{r:.2f}" for r in against)
    )
    for name, latencies in LATENCY.items():
        if latencies:
            rounds = " ".join(f"{p50:.1f}/{p99:.1f} ({p99 / p50:.2f})" for p50, p99 in latencies)
            budget = "  (budget: p99 <= 1.5x p50)" if name == "on" else ""
            print(f"{SERVERS[name]} p50/p99 ms (p99/p50) per round: {rounds}{budget}")


if __name__ == "__main__":
    main()
