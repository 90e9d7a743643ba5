"""Image files and uploads brought to the model contract the way Fashion-MNIST itself was made:
grayscale, light garment on a dark background, the longer side fitted into 28 pixels and
centred. Every conversion applied to an image is stated. Imports Pillow and numpy only (the
server, `toolkit predict` and the recommender share it; none of them needs TensorFlow for it).

Only the formats in ACCEPTED_FORMATS are opened (Pillow would open some forty, most of them
rarely tested); another one Pillow recognises is refused with UnsupportedImageError, naming it.
Opening reads only the header (format, size), so a caller can refuse a huge image, or decide
where to decode it, before any pixel is decoded (`open_image`, then `convert_image`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.contract import IMAGE_SHAPE
from toolkit.core.errors import DataError, UnsupportedImageError, UsageError

SIDE = IMAGE_SHAPE[0]
INVERT = ("auto", "yes", "no")
# Pillow's format names; what `toolkit predict`, `recommend --image` and the server decode.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED_TEXT = "PNG, JPEG, WebP, GIF, BMP or TIFF"
EXPECTED = f"expected an image file ({ACCEPTED_TEXT})"
# What Pillow raises on a damaged file besides OSError (its own fuzzers list the same family).
_DAMAGED = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
            ZeroDivisionError)
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")
_ORIENTATIONS = {2: "mirrored left to right", 3: "rotated 180°", 4: "mirrored top to bottom",
                 5: "transposed", 6: "rotated 90° clockwise", 7: "transversed",
                 8: "rotated 90° counter-clockwise"}
_NUMERIC_MODES = ("I", "F")  # and every "I;..." mode: 16- or 32-bit integers, 32-bit floats
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
LARGE_PIXELS = 1 << 20  # above this many pixels an image stays in Pillow until it is 28x28


@dataclass
class OpenedImage:
    """An image whose header was read (format and size known) and whose pixels were not decoded."""

    image: Any  # PIL.Image.Image, still reading from its file or buffer
    name: str

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height

    def close(self) -> None:
        self.image.close()


def load_image(path: str | Path, *, invert: str = "auto") -> tuple[np.ndarray, list[str]]:
    """uint8 [28,28] for an image file in one of ACCEPTED_FORMATS, and the conversions applied."""
    path = Path(path)
    check_invert(invert)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file; {EXPECTED}")
    if not path.is_file():
        raise DataError(f"{path}: image not found; {EXPECTED}")
    opened = open_image(path, name=str(path))
    try:
        return convert_image(opened, invert)
    finally:
        opened.close()


def decode_image(data: bytes, *, invert: str = "auto", name: str = "upload",
                 max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`load_image` for bytes already in memory (an HTTP upload): the same conversion. A server
    passes `max_pixels`, so a small compressed file cannot make it decode a huge image."""
    check_invert(invert)
    opened = open_image(data, name=name, max_pixels=max_pixels)
    try:
        return convert_image(opened, invert)
    finally:
        opened.close()


def check_invert(invert: str) -> None:
    if invert not in INVERT:
        raise UsageError(f"--invert must be auto, yes or no, got {invert!r}")


def open_image(source: bytes | Path, *, name: str, max_pixels: int | None = None) -> OpenedImage:
    """The image's header only: its format must be one of ACCEPTED_FORMATS (UnsupportedImageError
    otherwise, a DataError) and its size at most `max_pixels`; no pixel is decoded yet."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, bytes) and not source:
        raise DataError(f"{name}: empty; {EXPECTED}")
    try:
        image = Image.open(_stream(source), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(source, name) from None
    except (*_DAMAGED, Image.DecompressionBombError) as exc:
        raise _damaged(name, exc) from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        image.close()
        raise DataError(f"{name}: {image.width}x{image.height} pixels is more than this server "
                        f"decodes ({max_pixels:,}); send a smaller image")
    return OpenedImage(image, name)


def _stream(source: bytes | Path) -> Any:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _unidentified(source: bytes | Path, name: str) -> DataError:
    """A format Pillow knows but this toolkit does not take is named; anything else is unreadable."""
    from PIL import Image

    try:
        with Image.open(_stream(source)) as other:  # the header only, to name the format
            found = other.format
    except Exception:  # noqa: BLE001 - any failure here means: not an image Pillow recognises
        found = None
    if found is not None:
        return UnsupportedImageError(f"{name}: its format, {found}, is not accepted; {EXPECTED}")
    return DataError(f"{name}: not a readable image (not a format Pillow recognises); {EXPECTED}")


def _damaged(name: str, exc: BaseException) -> DataError:
    return DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc}); {EXPECTED}")


def convert_image(opened: OpenedImage, invert: str = "auto") -> tuple[np.ndarray, list[str]]:
    """uint8 [28,28] and the conversions: decode (the first frame), orient, grayscale, invert,
    fit into 28x28. This is the part that costs time on a large image."""
    from PIL import Image, ImageOps

    notes: list[str] = []
    try:
        image = _first_frame(opened.image, notes)
        gray = _grayscale(image, opened.name, notes)
    except DataError:
        raise
    except (*_DAMAGED, Image.DecompressionBombError) as exc:
        raise _damaged(opened.name, exc) from None
    if gray.width * gray.height > LARGE_PIXELS:
        # Pillow's own calls release the GIL; whole-image copies into numpy would hold it for
        # milliseconds, so a large image stays in Pillow until it is 28x28 (the same result).
        border = np.concatenate([np.asarray(gray.crop(box)).ravel() for box in _edges(gray)])
        if _inverted(border, invert, notes):
            gray = ImageOps.invert(gray)
        return _fit(gray, notes), notes
    # frombuffer over a copy of the bytes: a third of np.asarray's cost on a 28x28 image, still writable.
    pixels = np.frombuffer(bytearray(gray.tobytes()), np.uint8).reshape(gray.height, gray.width)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if _inverted(border, invert, notes):
        pixels = 255 - pixels
    if pixels.shape == (SIDE, SIDE):
        return pixels, notes
    return _fit(Image.fromarray(pixels, "L"), notes), notes


def _first_frame(image: Any, notes: list[str]) -> Any:
    """The decoded first frame (of an animation or a multi-page file), oriented by its EXIF."""
    from PIL import ImageOps

    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.seek(0)  # counting the frames moved through them
        notes.append(f"used the first of {frames} frames")
    # Only EXIF or XMP (or a TIFF tag) can carry an orientation; most uploads have none, and skip
    # the copy exif_transpose would make (half the decode time of a small PNG).
    oriented = image.format == "TIFF" or any(key in image.info for key in _ORIENTATION_KEYS)
    orientation = image.getexif().get(0x0112) if oriented else None  # EXIF Orientation, from the header
    image.load()
    if orientation in _ORIENTATIONS:
        # Pillow applies a TIFF's orientation while loading it (the tag is gone then); others here.
        if image.getexif().get(0x0112) == orientation:
            image = ImageOps.exif_transpose(image)
        notes.append(f"applied its EXIF orientation {orientation} ({_ORIENTATIONS[orientation]})")
    return image


def _grayscale(image: Any, name: str, notes: list[str]) -> Any:
    """An "L" image: numeric modes scaled, transparency composited onto black, LAB's lightness."""
    from PIL import Image

    mode = image.mode
    if mode in _NUMERIC_MODES or mode.startswith("I;"):
        return _scaled(image, name, notes)
    if mode == "L":
        return image
    if mode == "LAB":  # Pillow has no LAB -> RGB conversion; L is the lightness channel
        notes.append("used the lightness (L) channel of LAB")
        return image.getchannel("L")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        try:
            rgba = image.convert("RGBA")
        except ValueError:
            raise UnsupportedImageError(f"{name}: pixel mode {mode} is not supported; {EXPECTED} "
                                        "in RGB, RGBA, grayscale or palette mode") from None
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        notes.append("composited transparency onto black")
    try:
        gray = image.convert("L")
    except ValueError:
        raise UnsupportedImageError(f"{name}: pixel mode {mode} is not supported; {EXPECTED} "
                                    "in RGB, RGBA, grayscale or palette mode") from None
    notes.append(f"converted {mode} to grayscale")
    return gray


def _scaled(image: Any, name: str, notes: list[str]) -> Any:
    """16/32-bit integer and float pixels to 8 bits. Non-finite floats are refused, not cast."""
    from PIL import Image

    mode = image.mode
    array = np.asarray(image, dtype=np.float64)
    bad = int(array.size - np.isfinite(array).sum())
    if bad:
        raise DataError(f"{name}: {bad:,} of its {array.size:,} {mode} pixels are NaN or infinite; "
                        "expected finite pixel values (replace them, e.g. with 0, and save it again)")
    low, high = float(array.min()), float(array.max())
    if mode.startswith("I;16") or high > 255:
        top = 65535.0
    elif mode == "F" and low >= 0 and high <= 1:
        top = 1.0  # a float image in 0-1, as scientific tools write them
    else:
        top = 255.0
    clipped = "" if low >= 0 and high <= top else f", values outside 0-{top:g} clipped"
    notes.append(f"scaled {mode} pixels from 0-{top:g} to 8-bit{clipped}")
    return Image.fromarray(np.rint(np.clip(array / top * 255.0, 0, 255)).astype(np.uint8), "L")


def _edges(image: Any) -> list[tuple[int, int, int, int]]:
    width, height = image.size
    return [(0, 0, width, 1), (0, height - 1, width, height), (0, 0, 1, height),
            (width - 1, 0, width, height)]


def _inverted(border: np.ndarray, invert: str, notes: list[str]) -> bool:
    """Whether to invert: asked to, or (auto) the border is light on average."""
    if invert == "yes" or (invert == "auto" and int(border.sum()) > 127 * border.size):
        notes.append("inverted (light background; Fashion-MNIST garments are light on dark)"
                     if invert == "auto" else "inverted (--invert yes)")
        return True
    return False


def _fit(image: Any, notes: list[str]) -> np.ndarray:
    """An "L" image's longer side fitted into 28 pixels (LANCZOS), centred on black."""
    from PIL import Image

    width, height = image.size
    if (height, width) == (SIDE, SIDE):
        return np.asarray(image).copy()
    scale = SIDE / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = np.zeros((SIDE, SIDE), dtype=np.uint8)
    top, left = (SIDE - new_h) // 2, (SIDE - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = np.asarray(resized)
    padded = "" if new_w == new_h == SIDE else ", centred and padded with black"
    notes.append(f"resized {width}x{height} to {new_w}x{new_h}{padded} (aspect kept)")
    return canvas
