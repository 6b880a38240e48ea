"""`modelfn batch` throughput for sentence-embed over a JSON Lines file, as a ratio to a bare
offline loop (tokenize + `session.run` at batch 32 over the same sentences) measured in the
same process, the contenders taking turns every 256 rows (budget >= 0.9). Also `modelfn
batch` with rows kept in input order, which pads as the bare loop does. Prints medians and
minimums; asserts nothing.

    python bench/batch_throughput.py [--rows 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = ROOT / "functions" / "sentence-embed"
CORPUS = (
    "model serverless function batch scores every row in a bucket prefix and writes the output next to "
    "the input so a rerun skips what is done while the progress line shows rows per second and the time left "
    "embeddings map sentences to vectors that compare by cosine similarity across clouds and regions"
)
WORDS = CORPUS.split()


def sentences(count: int, seed: int = 7) -> list[str]:
    """Sentences of 4 to 40 words, as varied in length as a real corpus."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))).capitalize() + "." for _ in range(count)]


def offline(texts: list[str], batch: int = 32) -> float:
    """Sentences per second of the bare loop: the function's tokenizer, then session.run, 32 at a time."""
    sys.path.insert(0, str(FUNCTION))
    import hooks  # type: ignore[import-not-found]
    import onnxruntime as ort

    global _session
    if _session is None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 0
        _session = ort.InferenceSession(str(FUNCTION / "model.onnx"), options, providers=["CPUExecutionProvider"])
        _session.run(None, hooks.tokenize(texts[:batch]))
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        _session.run(None, hooks.tokenize(texts[start : start + batch]))
    return len(texts) / (time.perf_counter() - started)


_session = None
CHUNK = 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (FUNCTION / "model.onnx").is_file():
        print("sentence-embed is not built: python functions/sentence-embed/build.py", file=sys.stderr)
        return 2

    from modelfn.batch import job
    from modelfn.batch.scoring import Scorer
    from modelfn.batch.stores import LocalStore
    from modelfn.registry import Registry

    texts = sentences(args.rows)
    fn = Registry.from_dir(ROOT / "functions", ["sentence-embed"]).load("sentence-embed")
    scorer, in_order = Scorer(fn), Scorer(fn, by_length=False)
    work = Path(tempfile.mkdtemp(prefix="modelfn-bench-batch-"))
    # the machine is shared: the three contenders alternate every CHUNK rows (in turned order),
    # so a burst of someone else's load falls on all of them alike
    chunks = [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]
    stores = []
    for k, chunk in enumerate(chunks):
        (work / f"in-{k}").mkdir()
        (work / f"in-{k}" / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk))
        stores.append((LocalStore(work / f"in-{k}"), LocalStore(work / f"out-{k}")))

    def seconds(which: Scorer, k: int) -> float:
        report = job.run(which, *stores[k], overwrite=True, progress=False)
        assert report.ok and report.rows == len(chunks[k]), report.summary()
        return report.seconds

    def bare_seconds(k: int) -> float:
        return len(chunks[k]) / offline(chunks[k])

    bare: list[float] = []
    batch: list[float] = []
    unsorted: list[float] = []
    for round_ in range(args.rounds + 1):  # round 0 warms everything up and is not counted
        totals = [0.0, 0.0, 0.0]
        for k in range(len(chunks)):
            order = [0, 1, 2] if k % 2 == 0 else [2, 1, 0]
            for which in order:
                totals[which] += bare_seconds(k) if which == 0 else seconds((scorer, in_order)[which - 1], k)
        a, b, c = (len(texts) / t for t in totals)
        if round_:
            bare.append(a)
            batch.append(b)
            unsorted.append(c)
            print(
                f"round {round_}: offline {a:6.1f}/s  batch {b:6.1f}/s ({b / a:.2f})  "
                f"in order {c:6.1f}/s ({c / a:.2f})",
                flush=True,
            )
    print(f"rows per round: {len(texts)} sentences of 4-40 words, JSON Lines in and out")
    for label, figures in (
        ("offline tokenize + session.run, batch 32", bare),
        ("modelfn batch (batches by token length)", batch),
        ("modelfn batch, input order", unsorted),
    ):
        print(f"{label:42}: median {statistics.median(figures):6.1f}/s  min {min(figures):6.1f}/s")
    for label, figures in (("modelfn batch", batch), ("input order", unsorted)):
        ratios = [x / a for a, x in zip(bare, figures, strict=True)]
        print(
            f"ratio {label:13} (same round): median {statistics.median(ratios):.3f}  min {min(ratios):.3f}  budget 0.9"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
