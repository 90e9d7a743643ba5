"""The loader on the real Fashion-MNIST files, and every way a file can be bad."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolkit import CLASS_NAMES
from toolkit.core import data
from toolkit.core.errors import DataError


def test_real_data_shapes_dtypes_and_balance(dataset):
    assert dataset.x_train.shape == (60000, 28, 28) and dataset.x_train.dtype == np.uint8
    assert dataset.y_train.shape == (60000,) and dataset.y_train.dtype == np.uint8
    assert dataset.x_test.shape == (10000, 28, 28) and dataset.x_test.dtype == np.uint8
    assert dataset.y_test.shape == (10000,)
    assert data.class_counts(dataset.y_train) == [6000] * 10
    assert data.class_counts(dataset.y_test) == [1000] * 10
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[6] == "Shirt" and CLASS_NAMES[9] == "Ankle boot"
    # Real images, not noise: mean intensity of Fashion-MNIST is ~72.9/255.
    assert 70 < dataset.x_train.mean() < 76


def test_model_input_contract(dataset):
    x = data.to_model_input(dataset.x_test[:5])
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def _copy_real_files(dst: Path) -> Path:
    source = data.load().source
    dst.mkdir(parents=True, exist_ok=True)
    for idx in data.FILES.values():
        shutil.copy(source / f"{idx.name}.gz", dst / f"{idx.name}.gz")
    return dst


def test_explicit_dir_wins_and_verifies(tmp_path):
    copy = _copy_real_files(tmp_path / "fm")
    loaded = data.load(copy)
    assert loaded.source == copy.resolve() and loaded.origin.startswith("explicit")
    assert loaded.y_test.sum() == data.load().y_test.sum()


def test_env_var_names_the_source(tmp_path, monkeypatch):
    copy = _copy_real_files(tmp_path / "env")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(copy))
    assert data.load().origin == f"explicit ({data.DATA_DIR_ENV})"


def _rewrite(path: Path, mutate) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(mutate(raw))))


def test_corrupted_byte_fails_checksum(tmp_path):
    copy = _copy_real_files(tmp_path / "bad")
    target = copy / "t10k-labels-idx1-ubyte.gz"

    def flip(raw):
        raw[100] ^= 0x01
        return raw

    _rewrite(target, flip)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: checksum mismatch"):
        data.load(copy)


def test_truncated_file_is_named(tmp_path):
    copy = _copy_real_files(tmp_path / "trunc")
    target = copy / "train-labels-idx1-ubyte.gz"
    _rewrite(target, lambda raw: raw[:5000])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: .*bytes after decompression"):
        data.load(copy)


def test_not_gzip_and_wrong_magic(tmp_path):
    copy = _copy_real_files(tmp_path / "junk")
    (copy / "t10k-images-idx3-ubyte.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(DataError, match="cannot be read"):
        data.load(copy)
    copy2 = _copy_real_files(tmp_path / "magic")

    def bad_magic(raw):
        raw[2] = 9
        return raw

    _rewrite(copy2 / "t10k-labels-idx1-ubyte.gz", bad_magic)
    with pytest.raises(DataError, match="IDX magic"):
        data.load(copy2)


def test_missing_file_and_missing_dir(tmp_path):
    copy = _copy_real_files(tmp_path / "missing")
    (copy / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz not found"):
        data.load(copy)
    with pytest.raises(DataError, match="is not a directory"):
        data.load(tmp_path / "nowhere")


def test_download_fallback_into_keras_cache(tmp_path, monkeypatch):
    """No Debian package, empty cache: the files are fetched (here from a file:// mirror of the
    real files, since tests have no network), verified, and cached atomically."""
    mirror = _copy_real_files(tmp_path / "mirror")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data, "UPSTREAM_MIRRORS", ("file:///nonexistent/", mirror.as_uri() + "/"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    loaded = data.load()
    assert loaded.origin == "downloaded"
    cache = tmp_path / "keras" / "datasets" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{i.name}.gz" for i in data.FILES.values())
    # A corrupted cached file is replaced by a fresh download rather than trusted.
    _rewrite(cache / "t10k-labels-idx1-ubyte.gz", lambda raw: raw[:-1])
    data._cached_load.cache_clear()
    assert data.load().y_test.shape == (10000,)


def test_no_source_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load(allow_download=False)
