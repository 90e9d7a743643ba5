"""The fresh-clone fallback of `pytest bench/`: with nothing trained or exported, build untrained
models of the default specs and export them into a temporary folder with the registry's own
exporters (untrained weights time the same as trained ones; top-1 is not checked on them)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from toolkit.benchmark.plan import KERAS_KEY
from toolkit.core.contract import IMAGE_SHAPE
from toolkit.core.errors import DataError


def build_fallback(spec_name: str, folder: Path, keys: Iterable[str]) -> dict[str, str]:
    """Build `spec_name` untrained and export the formats `keys` into folder/NAME/.
    Returns {key: "ok" | the reason it failed}."""
    from toolkit.export import registry
    from toolkit.export._common import base_metadata
    from toolkit.export.pipeline import one_line
    from toolkit.specs import get_spec
    from toolkit.specs.models import build_model

    spec = get_spec(spec_name)
    out = folder / spec.name
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(spec)
    model.save(out / "model.keras")
    calibration = calibration_images()
    status: dict[str, str] = {KERAS_KEY: "ok"}
    for key in keys:
        if key == KERAS_KEY:
            continue
        fmt = registry.FORMATS[key]
        try:
            fmt.exporter_fn()(model, out / fmt.filename, precision=fmt.precision, calibration=calibration,
                              opset=None, metadata={**base_metadata(spec.name, None), "trained": "false"})
            status[key] = "ok"
        except Exception as exc:  # one failing exporter must not hide the others' timings
            status[key] = one_line(exc)
    return status


def calibration_images(n: int = 200) -> np.ndarray:
    """Real training images when the dataset is here; a host without it calibrates the untrained
    models on noise just as well. An explicit data source that fails is an error."""
    from toolkit.core.data import load, resolve_data_dir
    from toolkit.export._common import calibration_sample

    try:
        return calibration_sample(load().x_train, size=n)[0]
    except DataError:
        if resolve_data_dir()[0] is not None:
            raise
        return np.random.default_rng(0).random((n, *IMAGE_SHAPE), dtype=np.float32)
