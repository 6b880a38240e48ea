"""Codecs: how a function's natural payload maps to graph inputs and outputs back to JSON.
`tensor` serves any model with no code; `records`, `image` and `text` say what the
payload means so clients can send rows, pictures or sentences."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from typing import Any

import numpy as np

from modelfn.errors import BadRequest, InferenceError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelfn.http import orjson
from modelfn.session import TensorInfo
from modelfn.spec import IOSpec
from modelfn.tensors import coerce, coerce_item, to_json

_LONG_NUMBER = re.compile(rb"\d{19}")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TRANSLATE_BYTES = 64 * 1024


def has_long_number(raw: bytes) -> bool:
    """Whether `raw` holds a run of 19 or more digits. A small body is translated (10x faster
    than the regular expression); a large one is searched, which copies nothing."""
    if len(raw) < _TRANSLATE_BYTES:
        return b"0000000000000000000" in raw.translate(_DIGITS_AS_ZERO)
    return _LONG_NUMBER.search(raw) is not None


Feeds = dict[str, np.ndarray]
JSON_TYPES = ("application/json", "text/json")
IMAGE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/gif",
    "image/bmp",
    "image/webp",
    "application/octet-stream",
)


class Decoded:
    """Graph feeds for one request, and whether the caller sent one item (outputs lose the batch
    axis). (A plain class: a dataclass would be generated at import, ~0.5 ms of a Lambda cold start.)"""

    def __init__(self, feeds: Feeds, single: bool = False) -> None:
        self.feeds = feeds
        self.single = single

    @property
    def rows(self) -> int:
        first = next(iter(self.feeds.values()), None)
        return 1 if first is None or first.ndim == 0 else int(first.shape[0])


class Texts(Decoded):
    """Checked texts whose feeds are made on first use. The micro-batcher of a function that
    declares padding safe (`batching.pad_value`) never asks: it tokenises a whole batch's texts
    in one call, in its model thread, instead of each request's on the event loop."""

    def __init__(self, texts: list[str], single: bool, tokenize: Callable[[list[str]], Feeds]) -> None:
        self.texts = texts
        self.single = single
        self.tokenize = tokenize
        self._feeds: Feeds | None = None

    @property
    def feeds(self) -> Feeds:  # type: ignore[override]
        if self._feeds is None:
            self._feeds = self.tokenize(self.texts)
        return self._feeds

    @property
    def rows(self) -> int:
        return len(self.texts)

    @property
    def tokenised(self) -> bool:
        return self._feeds is not None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a JSON body may have: deeper ones are refused before parsing,
where Python's parser would recurse (and fail) or a hook would walk them."""

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def nested_deeper_than(text: bytes, limit: int) -> bool:
    """Whether arrays and objects in `text` nest deeper than `limit`, counted without parsing it
    (brackets inside strings skipped): linear in the size, with bounded memory."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    if b'"' in text:
        text = _JSON_STRING.sub(b"", text)
    brackets = np.frombuffer(text.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    depth, chunk = 0, 1 << 22
    for start in range(0, brackets.size, chunk):
        part = brackets[start : start + chunk]
        levels = depth + np.cumsum(np.where((part == ord("[")) | (part == ord("{")), 1, -1).astype(np.int32))
        if int(levels.max()) > limit:
            return True
        depth = int(levels[-1])
    return False


def parse_json(body: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    if not body or body.isspace():
        raise BadRequest("empty body: send a JSON document")
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
    if nested_deeper_than(raw, max_depth):
        raise BadRequest(f"JSON nested deeper than {max_depth} levels of arrays and objects; flatten the document")
    if orjson is not None and not has_long_number(raw):
        # 3-10x faster (a request's parse is a third of a small model's whole answer, and a large
        # body holds the GIL, so the server's event loop, that much less); what it refuses (NaN
        # tokens, bad input) the standard parser decides and words. Not for integers past 64
        # bits, which it would turn into floats: those are refused exactly.
        try:  # not contextlib.suppress: a context manager per request costs ~0.4 us
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"malformed JSON: the body is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {max_depth} levels of arrays and objects") from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts (4300 digits)
        raise BadRequest(f"malformed JSON: {exc}") from None


def b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"{what}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what}: invalid base64") from None


class Codec:
    """Decode a payload into feeds; encode outputs into JSON."""

    media_types: tuple[str, ...] = JSON_TYPES

    def __init__(self, io_spec: IOSpec, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
        self.io = io_spec
        self.inputs = {i.name: i for i in inputs}
        self.outputs = outputs
        self.target = self.inputs[io_spec.input] if io_spec.input in self.inputs else inputs[0]

    def parse(self, body: bytes, content_type: str | None) -> Any:
        """The payload object for a raw HTTP body, by its content type."""
        kind = JSON_TYPES[0] if content_type == JSON_TYPES[0] else media_type(content_type)  # the usual one, as is
        if kind in JSON_TYPES or kind.endswith("+json") or (not kind and JSON_TYPES[0] in self.media_types):
            return parse_json(body)
        if kind in self.media_types:
            return self.raw(body, kind)
        allowed = ", ".join(self.media_types)
        raise UnsupportedMediaType(f"content type {kind or '(none)'!r} is not accepted here; send one of: {allowed}")

    def raw(self, body: bytes, kind: str) -> Any:
        return body

    def decode(self, payload: Any) -> Decoded:
        raise NotImplementedError

    def encode(self, outputs: dict[str, np.ndarray], single: bool) -> dict[str, Any]:
        return {name: to_json(value, single) for name, value in outputs.items()}


class TensorCodec(Codec):
    """`{"inputs": {"name": value, ...}}`, a bare `{"name": value}`, or a bare value for a one-input model."""

    def decode(self, payload: Any) -> Decoded:
        if isinstance(payload, dict) and isinstance(payload.get("inputs"), dict):
            payload = payload["inputs"]
        if not isinstance(payload, dict):
            if len(self.inputs) != 1:
                raise InvalidInput(f"this model has several inputs; send an object keyed by {sorted(self.inputs)}")
            payload = {self.target.name: payload}
        if payload.keys() != self.inputs.keys():
            unknown = sorted(set(payload) - set(self.inputs))
            if unknown:
                raise InvalidInput(f"unknown input(s) {unknown}; the model takes {sorted(self.inputs)}", inputs=unknown)
            missing = sorted(set(self.inputs) - set(payload))
            raise InvalidInput(f"missing input(s) {missing}; the model takes {sorted(self.inputs)}", inputs=missing)
        feeds, singles = {}, set()
        for name, info in self.inputs.items():
            feeds[name], single = coerce_item(payload[name], info, self.io.nan_policy)
            singles.add(single)
        if len(singles) > 1:
            raise InvalidInput("send every input with a batch axis, or none of them")
        return Decoded(feeds, single=singles.pop())


class RecordsCodec(Codec):
    """A JSON object per row, `{"column": value}`, mapped to a feature vector in `io.columns` order."""

    def decode(self, payload: Any) -> Decoded:
        if isinstance(payload, dict) and "records" in payload:
            payload = payload["records"]
        single = isinstance(payload, dict)
        rows = [payload] if single else payload
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise InvalidInput("expected a JSON object or a non-empty list of objects keyed by column name")
        columns = self.io.columns
        for index, row in enumerate(rows):
            missing = [c for c in columns if c not in row]
            unknown = sorted(set(row) - set(columns))
            if missing or unknown:
                problems = (["missing " + ", ".join(missing)] if missing else []) + (
                    ["unknown " + ", ".join(unknown)] if unknown else []
                )
                raise InvalidInput(f"record {index}: {'; '.join(problems)} (columns are {columns})", record=index)
        matrix = [[row[c] for c in columns] for row in rows]
        return Decoded({self.target.name: coerce(matrix, self.target, self.io.nan_policy)}, single=single)


class ImageCodec(Codec):
    """PNG/JPEG bytes as the body, or `{"image": base64}` / `{"images": [base64, ...]}`; resized,
    scaled, normalised and laid out as `io.image` says."""

    media_types = (*JSON_TYPES, *IMAGE_TYPES)

    def raw(self, body: bytes, kind: str) -> Any:
        if not body:
            raise BadRequest("empty body: send image bytes")
        return {"images": [body]}

    def decode(self, payload: Any) -> Decoded:
        single = False
        if isinstance(payload, dict) and "image" in payload:
            images, single = [payload["image"]], True
        elif isinstance(payload, dict) and isinstance(payload.get("images"), list):
            images = payload["images"]
            single = len(images) == 1 and isinstance(images[0], bytes)
        else:
            raise InvalidInput('expected image bytes, {"image": "<base64>"} or {"images": ["<base64>", ...]}')
        if not images:
            raise InvalidInput("no images in the request")
        blobs = [img if isinstance(img, bytes) else b64decode(img, f"image {i}") for i, img in enumerate(images)]
        limit = self.io.image.max_pixels
        with ExitStack() as stack:
            opened = [stack.enter_context(_open_image(b, i, len(blobs), limit)) for i, b in enumerate(blobs)]
            self._check_pixels(opened)
            arrays = [self._pixels(image, i, len(blobs)) for i, image in enumerate(opened)]
        batch = np.stack(arrays)
        return Decoded({self.target.name: coerce(batch, self.target, "reject")}, single=single)

    def _check_pixels(self, images: list[Any]) -> None:
        """From the headers alone: a small file can declare a huge picture, and decoding it would
        take the memory and the time of that picture."""
        limit = self.io.image.max_pixels
        total = sum(image.size[0] * image.size[1] for image in images)
        if total <= limit:
            return
        if len(images) == 1:
            width, height = images[0].size
            what = f"the image is {width}x{height} ({_megapixels(total)})"
        else:
            what = f"the {len(images)} images hold {_megapixels(total)} together"
        raise PayloadTooLarge(
            f"{what}; this function decodes at most {_megapixels(limit)} per request (io.image.max_pixels)",
            pixels=total,
            max_pixels=limit,
        )

    def _size(self) -> tuple[int, int]:
        spec, shape = self.io.image, self.target.shape or ()
        width, height = spec.width, spec.height
        if not (width and height) and spec.layout != "flat" and len(shape) == 4:
            h, w = (shape[2], shape[3]) if spec.layout == "NCHW" else (shape[1], shape[2])
            height, width = height or h or 0, width or w or 0
        if not (width and height):
            raise InvalidInput("the image size is unknown: set io.image.width and io.image.height")
        return width, height

    def _pixels(self, image: Any, index: int, count: int) -> np.ndarray:
        from PIL import Image

        spec = self.io.image
        try:
            resized = image.convert(spec.mode).resize(self._size(), Image.Resampling.BILINEAR)
            array = np.asarray(resized, dtype=np.float32)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise BadRequest(f"{_which(index, count)} could not be decoded: {exc}") from None
        if spec.invert:
            array = 255.0 - array
        array = array * np.float32(spec.scale)
        if array.ndim == 2:
            array = array[..., None]
        if spec.mean:
            array = array - np.asarray(spec.mean, dtype=np.float32)
        if spec.std:
            array = np.divide(array, np.asarray(spec.std, dtype=np.float32), dtype=np.float32)
        if spec.layout == "NCHW":
            return array.transpose(2, 0, 1)
        if spec.layout == "flat":
            return array.reshape(-1)
        return array


IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
"""What the image codec opens: Pillow reads many more formats, each more code an attacker can reach."""


def _which(index: int, count: int) -> str:
    return "the image" if count == 1 else f"image {index}"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"


@cache
def _quiet_pillow_limit() -> None:
    """Pillow warns about images over 89 megapixels as it opens them; io.image.max_pixels, checked
    right after, is the rule here, so the warning is noise in the logs."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@contextmanager
def _open_image(data: bytes, index: int, count: int, limit: int) -> Iterator[Any]:
    """The image, opened lazily: its header is read, its pixels are not."""
    from PIL import Image, UnidentifiedImageError

    _quiet_pillow_limit()
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise BadRequest(
            f"{_which(index, count)} could not be decoded: not a PNG, JPEG, GIF, BMP or WebP image"
        ) from None
    except Image.DecompressionBombError:  # Pillow's own ceiling, far above io.image.max_pixels' default
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PayloadTooLarge(
            f"{_which(index, count)} declares more than {_megapixels(ceiling)}; "
            f"this function decodes at most {_megapixels(limit)} per request (io.image.max_pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(f"{_which(index, count)} could not be decoded: {exc}") from None
    with image:
        yield image


class TextCodec(Codec):
    """`{"text": "..."}`, `{"texts": [...]}`, a JSON string or list, or a text/plain body,
    through the function's tokenizer hook."""

    media_types = (*JSON_TYPES, "text/plain")

    def __init__(
        self,
        io_spec: IOSpec,
        inputs: list[TensorInfo],
        outputs: list[TensorInfo],
        tokenize: Callable[[list[str]], Feeds],
    ) -> None:
        super().__init__(io_spec, inputs, outputs)
        self.tokenize = tokenize

    def raw(self, body: bytes, kind: str) -> Any:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("text/plain body is not UTF-8") from None

    def decode(self, payload: Any) -> Decoded:
        if isinstance(payload, dict):
            if "text" in payload:
                payload = payload["text"]
            elif "texts" in payload:
                payload = payload["texts"]
            else:
                raise InvalidInput('expected {"text": "..."} or {"texts": ["...", ...]}')
        single = isinstance(payload, str)
        texts = [payload] if single else payload
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidInput("expected a string or a non-empty list of strings")
        if any(not t.strip() for t in texts):
            raise InvalidInput("empty text")
        return Texts(texts, single, self.feeds)

    def feeds(self, texts: list[str]) -> Feeds:
        """The graph's feeds for `texts`, through the tokenize hook (one request's, or a batch's)."""
        feeds = self.tokenize(texts)
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise InferenceError(f"the tokenize hook returned no {missing}; the model takes {sorted(self.inputs)}")
        return {name: coerce(feeds[name], info, "reject") for name, info in self.inputs.items()}


def make_codec(io_spec: IOSpec, inputs: list[TensorInfo], outputs: list[TensorInfo], tokenize: Any = None) -> Codec:
    if io_spec.codec == "text":
        return TextCodec(io_spec, inputs, outputs, tokenize)
    if io_spec.input is not None and io_spec.input not in {i.name for i in inputs}:
        raise InvalidInput(f"io.input {io_spec.input!r} is not a model input ({[i.name for i in inputs]})")
    return {"tensor": TensorCodec, "records": RecordsCodec, "image": ImageCodec}[io_spec.codec](
        io_spec, inputs, outputs
    )
