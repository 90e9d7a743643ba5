"""Image files and uploads brought to the model contract the way Fashion-MNIST itself was made:
grayscale, light garment on a dark background, the longer side fitted into 28 pixels and
centred. Every conversion applied to an image is stated. Imports Pillow and numpy only (the
server, `toolkit predict` and the recommender share it; none of them needs TensorFlow for it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.contract import IMAGE_SHAPE
from toolkit.core.errors import DataError, UsageError

SIDE = IMAGE_SHAPE[0]
INVERT = ("auto", "yes", "no")


def load_image(path: str | Path, *, invert: str = "auto") -> tuple[np.ndarray, list[str]]:
    """uint8 [28,28] for a PNG/JPEG (or anything Pillow reads), and the conversions applied."""
    path = Path(path)
    check_invert(invert)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file; expected a PNG or JPEG file")
    if not path.is_file():
        raise DataError(f"{path}: image not found; expected a PNG or JPEG file")
    return _convert(_open(path, str(path)), invert)


def decode_image(data: bytes, *, invert: str = "auto", name: str = "upload",
                 max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`load_image` for bytes already in memory (an HTTP upload): the same conversion. A server
    passes `max_pixels`, so a small compressed file cannot make it decode a huge image."""
    import io

    check_invert(invert)
    if not data:
        raise DataError(f"{name}: empty; expected a PNG or JPEG file")
    return _convert(_open(io.BytesIO(data), name, max_pixels), invert)


def check_invert(invert: str) -> None:
    if invert not in INVERT:
        raise UsageError(f"--invert must be auto, yes or no, got {invert!r}")


_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")


def _open(source: Any, name: str, max_pixels: int | None = None) -> tuple[Any, int]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise DataError(f"{name}: {img.width}x{img.height} pixels is more than this server "
                                f"decodes ({max_pixels:,}); send a smaller image")
            img.load()
            frames = getattr(img, "n_frames", 1)  # read while the file is open (GIF, TIFF, WebP)
            # Only EXIF or XMP can carry an orientation; most uploads have neither and skip the copy
            # exif_transpose would make (half the decode time of a small PNG).
            if any(key in img.info for key in _ORIENTATION_KEYS):
                img = ImageOps.exif_transpose(img)
            return img, frames
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (Pillow does not recognise its format); "
                        "expected a PNG or JPEG file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc}); "
                        "expected a PNG or JPEG file") from None


def _convert(opened: tuple[Any, int], invert: str) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    image, frames = opened
    notes: list[str] = []
    if frames > 1:
        notes.append(f"used the first of {frames} frames")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
        notes.append(f"scaled {mode} pixels to 8-bit")
    elif mode == "L":
        gray = image
    else:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, rgba)
            notes.append("composited transparency onto black")
        gray = image.convert("L")
        notes.append(f"converted {mode} to grayscale")
    # frombuffer over a copy of the bytes: a third of np.asarray's cost on a 28x28 image, still writable.
    pixels = np.frombuffer(bytearray(gray.tobytes()), np.uint8).reshape(gray.height, gray.width)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if invert == "yes" or (invert == "auto" and int(border.sum()) > 127 * border.size):
        pixels = 255 - pixels
        notes.append("inverted (light background; Fashion-MNIST garments are light on dark)"
                     if invert == "auto" else "inverted (--invert yes)")
    height, width = pixels.shape
    if (height, width) != (SIDE, SIDE):
        scale = SIDE / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        resized = Image.fromarray(pixels, "L").resize((new_w, new_h), Image.Resampling.LANCZOS)
        canvas = np.zeros((SIDE, SIDE), dtype=np.uint8)
        top, left = (SIDE - new_h) // 2, (SIDE - new_w) // 2
        canvas[top:top + new_h, left:left + new_w] = np.asarray(resized)
        pixels = canvas
        padded = "" if new_w == new_h == SIDE else ", centred and padded with black"
        notes.append(f"resized {width}x{height} to {new_w}x{new_h}{padded} (aspect kept)")
    return pixels, notes
