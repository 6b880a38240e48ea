"""Naive vs slim Lambda layer sizes: `python bench/layer_size.py [--arch x86_64 --arch arm64]`.

Downloads onnxruntime + numpy twice per architecture (the unslimmed install and the layer);
pip's cache makes the second download cheap.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from modelfn.deploy.layer import PLATFORMS, PYTHONS, build_layer, naive_size

MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", choices=PYTHONS)
    parser.add_argument("--arch", action="append", choices=list(PLATFORMS), help="repeatable; default x86_64")
    parser.add_argument("--onnxruntime-version", default=None)
    args = parser.parse_args()

    print(f"{'arch':8} {'layer':6} {'unzipped MB':>12} {'zipped MB':>10}")
    for arch in args.arch or ["x86_64"]:
        naive_unzipped, naive_zipped = naive_size(args.python, arch, onnxruntime_version=args.onnxruntime_version)
        with tempfile.TemporaryDirectory(prefix="modelfn-layer-bench-") as out:
            slim = build_layer(
                args.python, arch, Path(out), onnxruntime_version=args.onnxruntime_version, progress=lambda _: None
            )
        print(f"{arch:8} {'naive':6} {naive_unzipped / MB:12.1f} {naive_zipped / MB:10.1f}")
        print(f"{arch:8} {'slim':6} {slim.unzipped_bytes / MB:12.1f} {slim.zipped_bytes / MB:10.1f}")
        unzipped_ratio, zipped_ratio = slim.unzipped_bytes / naive_unzipped, slim.zipped_bytes / naive_zipped
        print(f"{arch:8} {'ratio':6} {unzipped_ratio:12.2f} {zipped_ratio:10.2f}", end="")
        print(f"   (slim includes {slim.bytecode_bytes / MB:.1f} MB of precompiled bytecode)")


if __name__ == "__main__":
    main()
