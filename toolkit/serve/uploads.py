"""Request bodies to model input: one image upload (multipart form or a raw image body) or a
JSON batch of 28x28 arrays. Every problem is an HTTPProblem with its 4xx status and one line.

Uploads are converted exactly as `toolkit predict` converts files (toolkit.core.images). A small
image is decoded on the event loop (well under a millisecond); a larger one in `LargeImages`' worker
process, so a 16-megapixel upload (a third of a second of decoding) never holds up other requests.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.core.errors import DataError, UnsupportedImageError

# Decoded on the event loop up to this size and body: a 256x256 image decodes and converts in
# about half a millisecond here, less than handing it to another process costs.
INLINE_MAX_PIXELS = 256 * 256
INLINE_MAX_BYTES = 256 * 1024
DECODER_NICE = 10  # the worker process yields the CPU to the server's event loop

IMAGE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "image/gif",
    "image/bmp",
    "application/octet-stream",
)


class HTTPProblem(Exception):
    """A request the server refuses: status, a short machine-readable type and one line of text."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"status": self.status, "type": self.type, "message": self.message}}
        ).encode()


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 16_000_000  # decoded size of one upload (a 4000x4000 photo)
    max_json_images: int = 256
    max_k: int = 100

    def describe(self) -> dict[str, Any]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_image_pixels": self.max_pixels,
            "max_json_images": self.max_json_images,
            "max_k": self.max_k,
        }


async def read_body(receive: Any, headers: dict[str, str], limit: int) -> bytes:
    """The whole body, refused with 413 before reading when Content-Length says it is too big and
    while reading when a chunked body grows past the limit."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPProblem(400, "bad_content_length", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPProblem(499, "client_gone", "the client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int) -> HTTPProblem:
    return HTTPProblem(
        413,
        "body_too_large",
        f"request body of {size:,} bytes is over this server's limit "
        f"of {limit:,} bytes (--max-body-mb); send a smaller image",
    )


def media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def image_bytes(body: bytes, headers: dict[str, str]) -> bytes:
    """The uploaded file's bytes: the first file part of a multipart form, or the raw body."""
    kind = media_type(headers)
    if kind == "multipart/form-data":
        return _first_file_part(body, headers["content-type"])
    if kind in IMAGE_TYPES or kind.startswith("image/"):
        if not body:
            raise HTTPProblem(400, "empty_body", "the request body is empty; send a PNG or JPEG image")
        return body
    raise HTTPProblem(
        415,
        "unsupported_media_type",
        f"Content-Type {kind or '(none)'!r} is not an image upload; send multipart/form-data "
        "with a file field, or the image itself as image/png or image/jpeg",
    )


def _first_file_part(body: bytes, content_type: str) -> bytes:
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPProblem(400, "bad_multipart", "multipart/form-data without a boundary parameter")
    single = _single_file_part(body, boundary)
    if single is not None:
        return single
    parts: list[dict[str, Any]] = []
    header: dict[str, bytearray] = {}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def on_header_end() -> None:
        parts[-1]["headers"][bytes(header.get("field", b"")).lower()] = bytes(header.get("value", b""))
        header.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPProblem(400, "bad_multipart", f"malformed multipart body ({exc})") from None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"filename" in disposition or disposition.get(b"name") in (b"image", b"file"):
            if not part["data"]:
                raise HTTPProblem(400, "empty_file", "the uploaded file is empty; send a PNG or JPEG image")
            return bytes(part["data"])
    raise HTTPProblem(400, "no_file", "the form has no file field; upload the image as field 'image'")


def _single_file_part(body: bytes, boundary: bytes) -> bytes | None:
    """The file of a form with exactly one part, as browsers, curl -F and HTTP libraries send an
    upload; None for anything else (then python-multipart parses it). The library's general parser
    costs as much as decoding the image; this unambiguous case takes a few byte searches."""
    opening, closing = b"--" + boundary + b"\r\n", b"\r\n--" + boundary + b"--"
    end = body.rfind(closing)
    if not body.startswith(opening) or end < 0 or body[end + len(closing) :] not in (b"", b"\r\n"):
        return None
    headers_end = body.find(b"\r\n\r\n", len(opening))
    if headers_end < 0 or body.find(b"\r\n--" + boundary, headers_end) != end:
        return None  # a second part, or a malformed one
    disposition = b""
    for line in body[len(opening) : headers_end].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            disposition = value
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(disposition)
    if kind != b"form-data" or not (b"filename" in params or params.get(b"name") in (b"image", b"file")):
        return None
    data = body[headers_end + 4 : end]
    if not data:
        raise HTTPProblem(400, "empty_file", "the uploaded file is empty; send a PNG or JPEG image")
    return data


async def decode_upload(data: bytes, limits: Limits, large: LargeImages | None = None
                        ) -> tuple[np.ndarray, list[str]]:
    """uint8 [28,28] and the conversions, as `toolkit predict` converts a file: a format outside
    the accepted list 415, anything unreadable 400. A large image's header is read here, its
    pixels are decoded by `large`."""
    from toolkit.core.images import convert_image, open_image

    try:
        opened = open_image(data, name="upload", max_pixels=limits.max_pixels)
        if large is not None and (opened.pixels > INLINE_MAX_PIXELS or len(data) > INLINE_MAX_BYTES):
            opened.close()
            return await large.decode(data, limits.max_pixels)
        try:
            return convert_image(opened)
        finally:
            opened.close()
    except UnsupportedImageError as exc:
        raise HTTPProblem(415, "unsupported_image", exc.message) from None
    except DataError as exc:
        raise HTTPProblem(400, "not_an_image", exc.message) from None


class LargeImages:
    """Large uploads decoded one at a time in a worker process at a lower CPU priority. A worker
    thread was not enough: Pillow holds the GIL while it allocates and converts a 16-megapixel
    image (tens of ms a call), and /healthz waited for it (issue 24: p99 124 ms on a thread with 4
    clients sending 4000x4000 PNGs, on a loaded 2-core machine). A separate process shares no
    lock with the event loop, and never more than one such image's buffers exist at once."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None  # started by start() or the first large upload

    def start(self) -> None:
        """Start the worker and its imports now (the server does at start-up): started by a
        request, it cost that request seconds on a loaded machine."""
        if self._pool is None:
            # spawn, not fork: the server has runtime and batch threads a fork would copy mid-work.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=os.nice, initargs=(DECODER_NICE,))
            self._pool.submit(importlib.import_module, "toolkit.core.images")

    async def decode(self, data: bytes, max_pixels: int) -> tuple[np.ndarray, list[str]]:
        from toolkit.core.images import decode_image

        self.start()
        job = functools.partial(decode_image, data, name="upload", max_pixels=max_pixels)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)
        except BrokenProcessPool:
            self.close()  # the next large upload starts a new worker
            raise DataError("upload: decoding it stopped the decoder process (out of memory, or a "
                            "damaged file); send a smaller image") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def json_images(body: bytes, limits: Limits) -> np.ndarray:
    """{"images": [28x28 arrays], "range": "0-255" (default) or "0-1"} -> uint8 [N,28,28]."""
    try:
        doc = json.loads(body)
    except RecursionError:  # the C decoder recurses per nesting level
        raise HTTPProblem(400, "bad_json", "the JSON body is nested too deeply; expected "
                          '{"images": [28x28 arrays of numbers]}') from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, "bad_json", f"the body is not valid JSON ({exc})") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not images:
        raise HTTPProblem(
            422, "bad_images", 'expected {"images": [28x28 arrays of pixel values]} with at least one image'
        )
    if len(images) > limits.max_json_images:
        raise HTTPProblem(
            413,
            "too_many_images",
            f"{len(images)} images in one request; the limit is {limits.max_json_images}: split the batch",
        )
    scale = doc.get("range", "0-255")
    if scale not in ("0-255", "0-1"):
        raise HTTPProblem(422, "bad_range", f'"range" must be "0-255" or "0-1", got {scale!r}')
    array = _numbers(images, body)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.shape[1:] != (28, 28):
        raise HTTPProblem(
            422,
            "bad_shape",
            f"images have shape {list(array.shape[1:])}; each must be 28x28 "
            "(a [N,28,28] or [N,28,28,1] batch)",
        )
    top = 1.0 if scale == "0-1" else 255.0
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > top:
        raise HTTPProblem(422, "bad_values", f"pixel values must be finite and within {scale}")
    return np.rint(array * (255.0 / top)).astype(np.uint8)


def _numbers(images: list, body: bytes) -> np.ndarray:
    """The pixel values as float64, only when every one is a JSON number: numpy would turn "12"
    and true into 12.0 and 1.0 (the first not-a-number is named instead)."""
    try:
        array = np.asarray(images)
    except (ValueError, TypeError, RecursionError):
        raise HTTPProblem(
            422, "bad_shape", "images must be equal-sized arrays of numbers, each 28x28"
        ) from None
    # A bool among numbers comes out as a number; the JSON literals true/false are its only source.
    if array.dtype.kind not in "iuf" or b"true" in body or b"false" in body:
        where = _first_non_number(images, "images")
        if where is not None:
            path, value = where
            raise HTTPProblem(422, "bad_values", f"{path} is {json.dumps(value)[:40]}, not a number; "
                              "pixel values must be JSON numbers")
    try:  # numbers numpy kept as Python objects (integers beyond 64 bits) convert here
        return array.astype(np.float64)
    except (ValueError, TypeError, OverflowError):
        raise HTTPProblem(
            422, "bad_shape", "images must be equal-sized arrays of numbers, each 28x28"
        ) from None


def _first_non_number(value: Any, path: str) -> tuple[str, Any] | None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_non_number(item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return path, value
    return None
