"""`modelfn optimize` on copies of breast-cancer, digits and sentence-embed: every candidate
tried with its accuracy and figures, then one before/after table (size, session load, warm
latency at batch 1, rows/s at batch 32; medians of interleaved runs on this machine).
Nothing in functions/ changes. Run: python bench/optimize.py [--explore] [NAME ...]"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from modelfn.deploy.optimize import Outcome, optimize, report
from modelfn.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("breast-cancer", "digits", "sentence-embed")


def run(name: str, scratch: Path, explore: bool) -> Outcome:
    folder = scratch / "functions" / name
    shutil.copytree(ROOT / "functions" / name, folder)
    started = time.perf_counter()
    outcome = optimize(
        load_spec(folder),
        data=ROOT / "events" / "samples" / f"{name}.jsonl",
        explore=explore,
        log=lambda line: print(line, flush=True),
    )
    print(report(outcome))
    print(f"  ({time.perf_counter() - started:.0f} s)\n", flush=True)
    return outcome


def main() -> None:
    explore = "--explore" in sys.argv
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(NAMES)
    outcomes = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            outcomes.append(run(name, Path(scratch), explore))
    print("| function | kept | size | load | latency (batch 1) | batch 32 | accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for o in outcomes:
        assert o.before is not None
        kept = " + ".join(c.step for c in o.tried if c.kept) or "nothing"
        after = o.after or o.before
        accuracy = o.result.comparison.headline if o.result and o.result.comparison else "-"
        cells = [f"{b} → {a}" for b, a in zip(o.before.row(), after.row(), strict=True)]
        print(f"| {o.function} | {kept} | {' | '.join(cells)} | {accuracy} |")


if __name__ == "__main__":
    main()
