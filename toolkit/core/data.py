"""Find, verify and load the real Fashion-MNIST (four IDX files).

Lookup order, first hit wins: an explicit directory (`--data-dir` or TOOLKIT_DATA_DIR), Debian's
package `dataset-fashion-mnist`, the Keras cache, else a download from upstream into the Keras
cache. Every file is verified (IDX magic, dimensions, item count and the SHA-256 of its
decompressed bytes, which Debian's re-gzipped copies share with upstream's) before anything
uses it. An explicit source that fails is an error; implicit ones that fail are passed over
with a warning.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit import CLASS_NAMES
from toolkit.core.errors import DataError

DATA_DIR_ENV = "TOOLKIT_DATA_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
UPSTREAM_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)


@dataclass(frozen=True)
class IdxFile:
    name: str
    magic: int
    dims: tuple[int, ...]
    sha256: str  # of the decompressed bytes


FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", 2051, (60000, 28, 28),
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", 2049, (60000,),
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", 2051, (10000, 28, 28),
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", 2049, (10000,),
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Path
    origin: str
    checksums: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "fashion-mnist"


def _find_file(directory: Path, idx: IdxFile) -> Path | None:
    for candidate in (directory / f"{idx.name}.gz", directory / idx.name):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: cannot be read ({exc}); expected a gzip'd IDX file. "
            "Delete it and reinstall/redownload the dataset."
        ) from None


def parse_idx(path: Path, idx: IdxFile) -> np.ndarray:
    """Parse and verify one IDX file; any problem is a DataError naming the file."""
    raw = _read_bytes(path)
    fix = "reinstall it (apt-get install --reinstall dataset-fashion-mnist) or delete it to redownload"
    if len(raw) < 8:
        raise DataError(f"{path}: truncated ({len(raw)} bytes); expected an IDX file. Fix: {fix}")
    magic = int.from_bytes(raw[:4], "big")
    if magic != idx.magic:
        raise DataError(f"{path}: IDX magic {magic}, expected {idx.magic}. Fix: {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != idx.dims:
        raise DataError(f"{path}: dimensions {dims}, expected {idx.dims}. Fix: {fix}")
    expected_len = header + int(np.prod(dims))
    if len(raw) != expected_len:
        raise DataError(
            f"{path}: {len(raw)} bytes after decompression, expected {expected_len} "
            f"(truncated or padded). Fix: {fix}"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != idx.sha256:
        raise DataError(
            f"{path}: checksum mismatch (sha256 {digest[:12]}..., expected {idx.sha256[:12]}...); "
            f"the file is corrupted. Fix: {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_from(directory: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key, idx in FILES.items():
        path = _find_file(directory, idx)
        if path is None:
            raise DataError(
                f"{directory}: {idx.name}.gz not found; expected the four Fashion-MNIST IDX "
                "files there. Fix: point --data-dir/TOOLKIT_DATA_DIR at the folder holding them"
            )
        arrays[key] = parse_idx(path, idx)
    if arrays["train_labels"].max() > 9 or arrays["test_labels"].max() > 9:
        raise DataError(f"{directory}: labels outside 0-9; the label files are corrupted")
    return arrays


def _has_all(directory: Path) -> bool:
    return all(_find_file(directory, idx) is not None for idx in FILES.values())


Progress = Callable[[str, int, int], None]


def download(directory: Path, progress: Progress | None = None) -> None:
    """Download the four upstream files into `directory`, each atomically, verified."""
    directory.mkdir(parents=True, exist_ok=True)
    for idx in FILES.values():
        target = directory / f"{idx.name}.gz"
        if target.is_file():
            continue
        errors = []
        for mirror in UPSTREAM_MIRRORS:
            try:
                _download_one(mirror + target.name, target, progress)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                errors.append(f"{mirror}: {exc}")
        else:
            raise DataError(
                f"could not download {target.name} ({'; '.join(errors)}). Fix: install the Debian "
                "package dataset-fashion-mnist, or put the four IDX .gz files in a folder and "
                f"pass --data-dir (or set {DATA_DIR_ENV})"
            )
        try:
            parse_idx(target, idx)
        except DataError:
            target.unlink(missing_ok=True)
            raise


def _download_one(url: str, target: Path, progress: Progress | None) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(target.name, done, total)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_data_dir(data_dir: str | Path | None = None) -> tuple[Path | None, str]:
    """The explicit directory (flag, then environment) if any, and how it was named."""
    if data_dir:
        return Path(data_dir).expanduser(), "--data-dir"
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser(), DATA_DIR_ENV
    return None, ""


def load(
    data_dir: str | Path | None = None,
    *,
    allow_download: bool = True,
    progress: Progress | None = None,
) -> Dataset:
    """Load and verify Fashion-MNIST from the first source that has it."""
    explicit, named_by = resolve_data_dir(data_dir)
    if explicit is not None:
        if not explicit.is_dir():
            raise DataError(
                f"{explicit} (from {named_by}) is not a directory; expected a folder with the "
                "four Fashion-MNIST IDX files. Fix: correct the path or unset it"
            )
        return _cached_load(explicit.resolve(), f"explicit ({named_by})", ())
    warnings: list[str] = []
    for directory, origin in ((DEBIAN_DIR, "debian"), (keras_cache_dir(), "keras-cache")):
        if not _has_all(directory):
            continue
        try:
            return _cached_load(directory.resolve(), origin, tuple(warnings))
        except DataError as exc:
            warnings.append(f"skipped {origin}: {exc.message}")
    if not allow_download:
        raise DataError(
            "Fashion-MNIST not found (looked in "
            f"{DEBIAN_DIR} and {keras_cache_dir()}). Fix: apt-get install dataset-fashion-mnist, "
            f"or pass --data-dir / set {DATA_DIR_ENV}"
        )
    cache = keras_cache_dir()
    for idx in FILES.values():
        # A corrupted cached file would otherwise block the redownload forever.
        path = cache / f"{idx.name}.gz"
        if path.is_file():
            try:
                parse_idx(path, idx)
            except DataError:
                path.unlink()
    download(cache, progress)
    return _cached_load(cache.resolve(), "downloaded", tuple(warnings))


@functools.lru_cache(maxsize=4)
def _cached_load(directory: Path, origin: str, warnings: tuple[str, ...]) -> Dataset:
    arrays = _load_from(directory)
    return Dataset(
        x_train=arrays["train_images"],
        y_train=arrays["train_labels"],
        x_test=arrays["test_images"],
        y_test=arrays["test_labels"],
        source=directory,
        origin=origin,
        checksums={idx.name: idx.sha256 for idx in FILES.values()},
        warnings=warnings,
    )


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] (or [N,28,28,1]) -> float32 [N,28,28,1] in [0,1]: the model contract."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(np.float32) / np.float32(255.0)


def class_counts(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=len(CLASS_NAMES)).tolist()
