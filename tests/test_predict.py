"""`toolkit predict` on real test images saved as PNG, through every runtime kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import encode, format_samples
from PIL import Image
from typer.testing import CliRunner

from toolkit import CLASS_NAMES
from toolkit.cli.app import app

runner = CliRunner()
SPEC = "DNN_2L_Dropout_Exp2"


@pytest.fixture(scope="module")
def models(trained_root, tmp_path_factory) -> dict[str, Path]:
    """model.keras and its ONNX and TFLite fp32 exports."""
    from toolkit.export import onnx as onnx_export
    from toolkit.export import tflite as tflite_export
    from toolkit.specs.models import load_model

    folder = tmp_path_factory.mktemp("predict-models")
    keras_path = trained_root / SPEC / "model.keras"
    model = load_model(keras_path)
    onnx_export.export(model, folder / "model.fp32.onnx", precision="fp32")
    tflite_export.export(model, folder / "model.fp32.tflite", precision="fp32")
    return {"keras": keras_path, "onnx": folder / "model.fp32.onnx",
            "tflite": folder / "model.fp32.tflite"}


@pytest.fixture(scope="module")
def pngs(dataset, tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i in range(6):
        path = folder / f"test_{i}.png"
        Image.fromarray(dataset.x_test[i], "L").save(path)
        paths.append(path)
    return paths, dataset.x_test[:6]


@pytest.mark.parametrize("kind", ["keras", "onnx", "tflite"])
def test_predict_real_pngs_matches_the_model(kind, models, pngs):
    from toolkit import runtimes
    from toolkit.core.data import to_model_input

    paths, raw = pngs
    result = runner.invoke(app, ["predict", str(models[kind]), *map(str, paths), "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    expected = runtimes.load(models[kind]).run(to_model_input(raw))
    for row, probs in zip(rows, expected, strict=True):
        assert row["class"] == CLASS_NAMES[int(probs.argmax())]
        assert row["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert len(row["top"]) == 3
        assert [t["probability"] for t in row["top"]] == sorted((t["probability"] for t in row["top"]),
                                                                reverse=True)
        assert row["conversions"] == []  # already 28x28 grayscale


def test_predict_table_states_conversions(models, dataset, tmp_path):
    # A 56x56 RGB JPEG of a dark-on-light garment: grayscale, inverted and resized, all stated.
    garment = 255 - np.kron(dataset.x_test[0], np.ones((2, 2), dtype=np.uint8))
    path = tmp_path / "shirt.jpg"
    Image.fromarray(np.stack([garment] * 3, axis=-1), "RGB").save(path, quality=95)
    result = runner.invoke(app, ["predict", str(models["onnx"]), str(path)])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "converted RGB to grayscale" in flat and "inverted" in flat
    assert "resized 56x56 to 28x28" in flat

    from toolkit.core.images import load_image

    pixels, notes = load_image(path)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8 and len(notes) == 3
    assert np.abs(pixels.astype(int) - dataset.x_test[0]).mean() < 20  # the same garment again


def test_unreadable_and_missing_images_are_one_line(models, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    for target, needle in ((bad, "not a readable image"), (tmp_path / "missing.png", "image not found")):
        result = runner.invoke(app, ["predict", str(models["onnx"]), str(target)])
        assert result.exit_code == 3, result.output
        assert needle in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("suffix,what", [(".onnx", "ONNX model"), (".tflite", "TFLite model"),
                                         (".keras", "Keras model")])
def test_corrupted_model_files_are_one_line(pngs, tmp_path, suffix, what):
    paths, _ = pngs
    model = tmp_path / f"model{suffix}"
    model.write_bytes(b"\x00\x01 corrupted bytes" * 10)
    before = model.read_bytes()
    result = runner.invoke(app, ["predict", str(model), str(paths[0])])
    assert result.exit_code == 4, result.output
    flat = " ".join(result.output.split())
    assert f"not a loadable {what}" in flat and str(model.name) in flat
    assert "Traceback" not in result.output
    assert model.read_bytes() == before


def test_bad_top_k_and_unknown_suffix(models, pngs, tmp_path):
    paths, _ = pngs
    result = runner.invoke(app, ["predict", str(models["onnx"]), str(paths[0]), "--top-k", "11"])
    assert result.exit_code == 2 and "--top-k must be between 1 and 10" in result.output
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    result = runner.invoke(app, ["predict", str(other), str(paths[0])])
    assert result.exit_code == 2 and ".onnx" in result.output


# ---------------------------------------------------------------- formats (issue 24)


def test_every_accepted_format_converts_and_states_how(dataset, tmp_path):
    """Animated GIF, multi-page TIFF, LAB TIFF, ... each decodes to the garment it holds, with its
    conversion stated; the same files through `toolkit predict` (below) and the server (test_serve)."""
    from toolkit.core.images import load_image

    garment = dataset.x_test[0]
    for name, (data, phrase) in format_samples(garment).items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(data)
        pixels, notes = load_image(path)
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8, name
        assert any(phrase in note for note in notes), (name, notes)
        if "EXIF" not in name and "1-bit" not in name:  # rotated, or thresholded to black and white
            assert np.abs(pixels.astype(int) - garment).mean() < 3, name


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_other_formats_pillow_reads_are_refused_naming_the_format(dataset, tmp_path, fmt):
    from toolkit.core.errors import UnsupportedImageError
    from toolkit.core.images import load_image

    path = tmp_path / f"garment.{fmt.lower()}"
    path.write_bytes(encode(Image.fromarray(dataset.x_test[0], "L").convert("RGB"), fmt))
    with pytest.raises(UnsupportedImageError, match=f"its format, {fmt}, is not accepted.*PNG, JPEG"):
        load_image(path)


def test_nan_pixels_are_refused_not_cast(tmp_path):
    from toolkit.core.errors import DataError
    from toolkit.core.images import load_image

    pixels = np.full((28, 28), 0.5, np.float32)
    pixels[3, 4] = np.nan
    path = tmp_path / "nan.tiff"
    Image.fromarray(pixels, "F").save(path)
    with pytest.raises(DataError, match="1 of its 784 F pixels are NaN or infinite"):
        load_image(path)


def test_predict_takes_a_gif_and_tiffs_and_reports_a_refused_format_with_exit_7(models, pngs, dataset,
                                                                                   tmp_path):
    """`toolkit predict good.png two.gif good2.png` exited 1 with no result at all (issue 24)."""
    paths, _ = pngs
    samples = format_samples(dataset.x_test[0])
    gif, lab = tmp_path / "two.gif", tmp_path / "lab.tiff"
    gif.write_bytes(samples["animated GIF"][0])
    lab.write_bytes(samples["LAB TIFF"][0])
    result = runner.invoke(app, ["predict", str(models["onnx"]), str(paths[0]), str(gif), str(lab),
                                 str(paths[1]), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["image"] for r in rows] == [str(paths[0]), str(gif), str(lab), str(paths[1])]
    assert "used the first of 2 frames" in rows[1]["conversions"]
    # The first frame and the LAB file's lightness are the PNG's garment: the same answer.
    assert rows[1]["top"] == rows[2]["top"] == rows[0]["top"]
    icon = tmp_path / "icon.ico"
    icon.write_bytes(encode(Image.fromarray(dataset.x_test[0], "L"), "ICO"))
    result = runner.invoke(app, ["predict", str(models["onnx"]), str(paths[0]), str(icon), str(gif),
                                 "--json"])
    assert result.exit_code == 7, result.output
    assert [r["image"] for r in json.loads(result.stdout)] == [str(paths[0]), str(gif)]
    assert f"failed: {icon}: its format, ICO, is not accepted" in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_recommend_image_refuses_a_format_before_any_work(tmp_path, dataset):
    icon = tmp_path / "icon.ico"
    icon.write_bytes(encode(Image.fromarray(dataset.x_test[0], "L"), "ICO"))
    result = runner.invoke(app, ["recommend", "--exp", SPEC, "--image", str(icon), "--artifacts",
                                 str(tmp_path / "artifacts")])
    assert result.exit_code == 3, result.output
    assert "its format, ICO, is not accepted" in " ".join(result.output.split())
    assert not (tmp_path / "artifacts").exists()
