"""Classify image files with any model file (.keras, .onnx, .tflite) through the runtimes table.

Images are converted by toolkit.core.images (each conversion stated in its result). An image
that cannot be read does not stop the others: every result that could be computed is returned,
with the failures beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.contract import CLASS_NAMES
from toolkit.core.errors import DataError, UsageError
from toolkit.core.images import check_invert, load_image


@dataclass
class Prediction:
    image: str
    top: list[dict[str, Any]]  # [{"label", "class", "probability"}], most probable first
    conversions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "class": self.top[0]["class"],
                "probability": self.top[0]["probability"], "top": self.top,
                "conversions": self.conversions}


@dataclass
class Predictions:
    results: list[Prediction]  # in the order the images were given, unreadable ones left out
    failed: list[DataError] = field(default_factory=list)  # one per unreadable image


def predict(model_file: str | Path, images: list[str | Path], *, top_k: int = 1,
            runtime: str | None = None, invert: str = "auto") -> Predictions:
    """Top-k classes for each readable image file, from one model file on its default (or given)
    runtime. Unreadable images are listed in `failed`; when none is readable, that is a DataError
    (the image's own when there was one)."""
    from toolkit import runtimes
    from toolkit.core.data import to_model_input

    if not images:
        raise UsageError("no images given; pass one or more image files (PNG, JPEG, WebP, GIF, BMP or TIFF) "
                         "after the model file")
    if not 1 <= top_k <= len(CLASS_NAMES):
        raise UsageError(f"--top-k must be between 1 and {len(CLASS_NAMES)}, got {top_k}")
    check_invert(invert)
    loaded: list[tuple[Path, np.ndarray, list[str]]] = []
    failed: list[DataError] = []
    for path in images:  # every image is read before the model loads
        try:
            loaded.append((Path(path), *load_image(path, invert=invert)))
        except DataError as exc:
            failed.append(exc)
    if not loaded:
        if len(failed) == 1:
            raise failed[0]
        raise DataError(f"none of the {len(failed)} images could be read, e.g. {failed[0].message}")
    model = runtimes.load(model_file, runtime)
    probs = np.asarray(model.run(to_model_input(np.stack([pixels for _, pixels, _ in loaded]))))
    runtimes.check_output(model_file, probs, batch=len(loaded))
    results = []
    for (path, _, notes), row in zip(loaded, probs, strict=True):
        order = np.argsort(-row, kind="stable")[:top_k]
        top = [{"label": int(i), "class": CLASS_NAMES[i], "probability": float(row[i])} for i in order]
        results.append(Prediction(str(path), top, notes))
    return Predictions(results, failed)
