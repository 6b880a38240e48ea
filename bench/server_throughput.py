"""Server throughput of sentence-embed under 32 concurrent single-sentence requests, as a
ratio to offline `session.run` at batch 32 measured in the same run (budget >= 0.9), with
micro-batching on and off. Loopback only; prints figures, asserts nothing.

    python bench/server_throughput.py [--requests 1024] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from load import RawConnection, ServerProcess

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = ROOT / "functions" / "sentence-embed"
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


def offline(batch: int, rounds: int) -> float:
    """Sentences per second of plain session.run at `batch`, the same tokenizer and threads."""
    sys.path.insert(0, str(FUNCTION))
    import hooks  # type: ignore[import-not-found]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    session = ort.InferenceSession(str(FUNCTION / "model.onnx"), options, providers=["CPUExecutionProvider"])
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    session.run(None, hooks.tokenize(texts))
    started = time.perf_counter()
    for _ in range(rounds):
        session.run(None, hooks.tokenize(texts))
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


async def _load(port: int, requests: int, concurrency: int) -> float:
    """Requests per second from `concurrency` keep-alive connections of the raw client in
    bench/load.py: with two cores shared, a heavier client would slow the server it measures."""
    bodies = [json.dumps({"text": s}).encode() for s in SENTENCES]
    connections = [RawConnection("127.0.0.1", port, "/functions/sentence-embed", bodies) for _ in range(concurrency)]
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


def served(batching: bool, requests: int, concurrency: int) -> float:
    functions = _functions_dir(batching)
    server = ServerProcess("sentence-embed", functions)
    try:
        server.wait_ready()
        return asyncio.run(_load(server.port, requests, concurrency))
    finally:
        server.stop()
        shutil.rmtree(functions, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if not (FUNCTION / "model.onnx").exists():
        raise SystemExit("build the model first: python functions/sentence-embed/build.py")

    base32 = offline(32, max(4, args.requests // 32))
    base1 = offline(1, 64)
    on = served(True, args.requests, args.concurrency)
    off = served(False, args.requests, args.concurrency)
    print(f"offline session.run, batch 32 : {base32:8.1f} sentences/s")
    print(f"offline session.run, batch 1  : {base1:8.1f} sentences/s")
    print(
        f"server, batching on,  c={args.concurrency}  : {on:8.1f} requests/s   ratio {on / base32:.2f} (budget >= 0.90)"
    )
    print(f"server, batching off, c={args.concurrency}  : {off:8.1f} requests/s   ratio {off / base32:.2f}")


if __name__ == "__main__":
    main()
