"""Shared fixtures: the real dataset and small models trained on real subsets, once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Small real subsets keep the suite fast on 2 cores; accuracy figures are not asserted on them
# beyond "better than chance".
TINY_LIMIT = 3000
TINY_SPECS = ("CNN_1L_Dropout_Exp6", "DNN_2L_Dropout_Exp2")
# Fixtures that train or convert real models, or start Ray. A test that uses one (directly or
# through another fixture) is marked slow, so `pytest -m 'not slow'` is the quick loop; tests
# that train or convert by themselves carry the mark explicitly.
SLOW_FIXTURES = {"trained_root", "local_root", "ray_instance"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def default_run_id(name: str, *, seed: int = 0, epochs: int = 1, limit_train: int | None = TINY_LIMIT) -> str:
    """The run id `train.train(name, ...)` gives without --mixed-precision: the spec's recipe,
    resolved on this machine (Exp6 trains in bf16 where the CPU has it, in float32 elsewhere)."""
    from toolkit.core import artifacts
    from toolkit.specs import get_spec
    from toolkit.training import precision

    mode = precision.resolve(get_spec(name).mixed_precision)
    return artifacts.run_id(seed, epochs, limit_train, mode)


@pytest.fixture(scope="session")
def dataset():
    from toolkit.core import data

    return data.load()


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory) -> Path:
    """An artifacts root in which TINY_SPECS are trained (1 epoch, 3,000 real images)."""
    from toolkit.training import train

    root = tmp_path_factory.mktemp("artifacts")
    for name in TINY_SPECS:
        train.train(train.TrainRequest(name, epochs=1, limit_train=TINY_LIMIT, root=root))
    return root


def copy_spec(trained_root: Path, tmp: Path, name: str) -> Path:
    """A private artifacts root holding one trained spec (tests must not touch the shared one)."""
    import shutil

    root = tmp / "artifacts"
    shutil.copytree(trained_root / name, root / name, ignore=shutil.ignore_patterns("runs"))
    return root


def fingerprint(root: Path, *, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), for "nothing valid was lost" checks;
    paths containing one of `ignore` are left out."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not any(i in str(p) for i in ignore)}


@pytest.fixture(scope="session")
def test_batch(dataset) -> tuple[np.ndarray, np.ndarray]:
    """The first 256 real test images in the model contract, with labels."""
    from toolkit.core.data import to_model_input

    return to_model_input(dataset.x_test[:256]), dataset.y_test[:256]


# ---------------------------------------------------------------- serving (test_serve, test_page_browser)

SERVE_SPEC = "DNN_2L_Dropout_Exp2"  # the fastest trained spec to convert
SERVE_CATALOG = 500  # the recommender's catalog: the first 500 real training images


def png(pixels: np.ndarray) -> bytes:
    """A uint8 [28,28] image as the bytes of a PNG file."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def served_root(trained_root, tmp_path_factory) -> Path:
    """A private root: SERVE_SPEC exported to ONNX fp32 (parity passed), its embedding ONNX and catalog."""
    import shutil

    from typer.testing import CliRunner

    from toolkit.cli.app import app

    root = tmp_path_factory.mktemp("serve") / "artifacts"
    shutil.copytree(trained_root / SERVE_SPEC, root / SERVE_SPEC,
                    ignore=shutil.ignore_patterns("runs", "recommend"))
    for args in (["export", "--exp", SERVE_SPEC, "--format", "onnx", "--precision", "fp32"],
                 ["recommend", "--exp", SERVE_SPEC, "--index", "0", "--onnx", "--catalog-limit",
                  str(SERVE_CATALOG)]):
        result = CliRunner().invoke(app, [*args, "--artifacts", str(root)])
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def live_server(served_root):
    """`toolkit serve` in a child process that cannot import TensorFlow, on a free loopback port:
    max batch 16, 2 ms max wait, 64 queued images, 64 kB bodies; stopped (Ctrl-C) at the end."""
    from toolkit.serve.process import spawn

    with spawn(["--exp", SERVE_SPEC, "--artifacts", str(served_root), "--catalog-limit", str(SERVE_CATALOG),
                "--max-batch", "16", "--max-wait-ms", "2", "--max-queue", "64",
                "--max-body-mb", str(64 / 1024)]) as server:
        yield server


def encode(image, fmt: str, **options) -> bytes:
    """A Pillow image as the bytes of a file in `fmt` (any format Pillow writes)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def format_samples(garment: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """One real garment (uint8 [28,28]) in each accepted format and an awkward mode of it, with the
    conversion each must state: name -> (file bytes, a phrase of its conversions)."""
    from PIL import Image

    gray = Image.fromarray(garment, "L")
    second = Image.fromarray(255 - garment, "L")
    big = gray.resize((56, 56))
    lab = Image.merge("LAB", (gray, Image.new("L", gray.size, 128), Image.new("L", gray.size, 128)))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation: rotate 90 degrees clockwise to display
    return {
        "animated GIF": (encode(gray, "GIF", save_all=True, append_images=[second]), "first of 2 frames"),
        "multi-page TIFF": (encode(gray, "TIFF", save_all=True, append_images=[second]),
                            "first of 2 frames"),
        "LAB TIFF": (encode(lab, "TIFF"), "lightness (L) channel of LAB"),
        "float TIFF 0-1": (encode(Image.fromarray(garment.astype(np.float32) / 255, "F"), "TIFF"),
                           "scaled F pixels from 0-1 to 8-bit"),
        "16-bit PNG": (encode(Image.fromarray(garment.astype(np.uint16) * 257), "PNG"),
                       "from 0-65535 to 8-bit"),
        "CMYK JPEG": (encode(gray.convert("CMYK"), "JPEG", quality=95), "converted CMYK to grayscale"),
        "RGBA WebP": (encode(Image.merge("RGBA", (gray, gray, gray, Image.fromarray(
            np.where(garment > 0, 255, 0).astype(np.uint8), "L"))), "WEBP", lossless=True),
            "composited transparency"),
        "1-bit BMP": (encode(gray.convert("1"), "BMP"), "converted 1 to grayscale"),
        "EXIF-rotated JPEG": (encode(big.convert("RGB"), "JPEG", quality=95, exif=exif.tobytes()),
                              "EXIF orientation 6 (rotated 90° clockwise)"),
    }
