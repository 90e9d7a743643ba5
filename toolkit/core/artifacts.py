"""The artifacts layout in one place: paths, atomic writes, locks and run manifests.

    ROOT/NAME/{model.keras, metrics.json, history.json}   the spec's current run
      (+ test_predictions.npy: its top-1 class of each test image, where the run wrote one)
    ROOT/NAME/runs/<run-id>/{same files}                  every completed run, kept
    ROOT/NAME/runs/.<run-id>.partial/                     resume state of an unfinished run
    ROOT/NAME/runs/<run-id>.lock                          held while a run trains
    ROOT/NAME/export/, exports.json, parity.json, analysis/   later stages
    ROOT/NAME/distill/                                    a teacher's probabilities for its students
    ROOT/NAME/predictions/<key>.npy                       top-1 per test image of each checked file
    ROOT/bench/, ROOT/report.*, ROOT/sweep.*

The current run's files are hard links to the files of one completed run (no duplicate
copies of large models). Nobody else builds artifact paths by hand.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.core.errors import ArtifactError, BusyError

ARTIFACTS_ENV = "TOOLKIT_ARTIFACTS"
RUN_FILES = ("model.keras", "history.json", "metrics.json")
# Files a run may have besides RUN_FILES: runs written before they existed are still complete.
OPTIONAL_RUN_FILES = ("test_predictions.npy",)
PREDICTIONS_FILE = "test_predictions.npy"


def resolve_root(root: str | Path | None = None) -> Path:
    """Flag, then TOOLKIT_ARTIFACTS, then ./artifacts. A regular file there is an ArtifactError."""
    chosen = root or os.environ.get(ARTIFACTS_ENV) or "artifacts"
    path = Path(chosen).expanduser().resolve()
    if path.exists() and not path.is_dir():
        named = "--artifacts" if root else ARTIFACTS_ENV if os.environ.get(ARTIFACTS_ENV) else "the default"
        raise ArtifactError(
            f"{path} is a file; expected a folder for the artifacts root (from {named}). Fix: pass a "
            f"folder, e.g. --artifacts {path.parent / 'artifacts'}, or move the file away"
        )
    return path


# ---------------------------------------------------------------- writable folders

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT)
STORAGE_ERRNOS = _NOT_WRITABLE + _FULL  # the write failures that are the disk's, not the toolkit's


def not_writable(folder: Path, exc: OSError) -> ArtifactError:
    """"Cannot write there" (permission, read-only file system, disk full) as one line naming the
    folder and the fix."""
    folder = Path(exc.filename).parent if exc.filename and Path(exc.filename) != folder else folder
    if exc.errno in _FULL:
        return ArtifactError(
            f"{folder}: cannot write there: the disk is full ({exc.strerror or exc}). Fix: free space on "
            f"that file system or use another artifacts root (--artifacts DIR or {ARTIFACTS_ENV}); "
            "files written before were left as they were")
    return ArtifactError(
        f"{folder}: cannot write there ({exc.strerror or exc}); expected a folder this user can write. "
        f"Fix: make it writable (chmod u+w {folder}) or use another artifacts root "
        f"(--artifacts DIR or {ARTIFACTS_ENV})"
    )


def storage_error(exc: BaseException) -> ArtifactError | None:
    """The one-line error for a write that failed because of the disk (permission, read-only,
    full), found anywhere in the exception's chain; None for any other failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return not_writable(Path(seen.filename or ".").parent if seen.filename else Path("."), seen)
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Maps a permission, read-only-filesystem or disk-full error of the enclosed file operations
    to `not_writable`; any other error passes unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise not_writable(folder, exc) from None


def require_writable(folder: Path) -> None:
    """Fail early, before any work, when an existing folder cannot be written (a missing one is
    created, and checked, when the first file is written)."""
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise not_writable(folder, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))


def run_id(seed: int, epochs: int, limit_train: int | None = None, mixed_precision: str = "off",
           variant: str | None = None) -> str:
    """seed0-e20, seed1-e5-n3000, seed0-e20-bf16, seed0-e30-r1a2b3c4d (a recipe other than the
    spec's own). Float32 runs carry no precision suffix."""
    rid = f"seed{seed}-e{epochs}"
    rid = f"{rid}-n{limit_train}" if limit_train else rid
    rid = f"{rid}-{variant}" if variant else rid
    return rid if mixed_precision == "off" else f"{rid}-{mixed_precision}"


# ---------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it into place only on success."""
    with _writing(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temp name keeps the real suffix: Keras refuses to save to a name without ".keras".
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=f".tmp{target.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with _writing(target.parent):
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from others
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_private_dir(parent: Path, prefix: str) -> Path:
    """A fresh temp folder under `parent` with normal (umask) permissions."""
    with _writing(parent):
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~_umask())
    return path


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp, _writing(target.parent):
        tmp.write_bytes(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path, *, what: str = "file", fix: str = "") -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} not found. {fix}".strip()) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{path}: {what} is corrupted ({exc}). {fix or 'Delete it and rerun the command that writes it.'}"
        ) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_bytes(path: Path) -> int:
    """The bytes a model file takes to deploy: the file, plus the weights an OpenVINO IR graph
    (.xml) keeps beside it (.bin, same stem)."""
    size = path.stat().st_size
    weights = path.with_suffix(".bin")
    return size + weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else size


def link_or_copy(source: Path, target: Path) -> None:
    """Atomically make `target` the same file as `source` (hard link, copy across devices)."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copy2(source, tmp)


# ---------------------------------------------------------------- locks


@contextlib.contextmanager
def exclusive_lock(path: Path, *, what: str, wait: bool = False) -> Iterator[None]:
    """An flock held for the block; without `wait`, a holder elsewhere is a BusyError."""
    with _writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - closed by the `with fh` below
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise BusyError(
                f"{what} is busy: {holder} holds {path}. Wait for it to finish, "
                "or use another seed or artifacts root"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class SpecArtifacts:
    """Paths of one spec's artifacts under a root."""

    root: Path
    name: str

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def model(self) -> Path:
        return self.dir / "model.keras"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def history(self) -> Path:
        return self.dir / "history.json"

    @property
    def runs_dir(self) -> Path:
        return self.dir / "runs"

    def run_dir(self, rid: str) -> Path:
        return self.runs_dir / rid

    def partial_dir(self, rid: str) -> Path:
        return self.runs_dir / f".{rid}.partial"

    def lock_file(self, rid: str) -> Path:
        return self.runs_dir / f"{rid}.lock"

    @property
    def test_predictions(self) -> Path:
        return self.dir / PREDICTIONS_FILE

    @property
    def predictions_dir(self) -> Path:
        return self.dir / "predictions"

    def predictions_file(self, key: str) -> Path:
        """Where parity keeps the top-1 classes it measured for `key` (an export, or keras-fp32)."""
        return self.predictions_dir / f"{key}.npy"

    @property
    def export_dir(self) -> Path:
        return self.dir / "export"

    @property
    def exports_json(self) -> Path:
        return self.dir / "exports.json"

    @property
    def parity_json(self) -> Path:
        return self.dir / "parity.json"

    @property
    def analysis_dir(self) -> Path:
        return self.dir / "analysis"

    @property
    def recommend_dir(self) -> Path:
        return self.dir / "recommend"

    @property
    def distill_dir(self) -> Path:
        """A teacher's probabilities on training images, kept for its students (toolkit.distill)."""
        return self.dir / "distill"

    def is_trained(self) -> bool:
        return self.model.is_file() and self.metrics.is_file()

    def require_trained(self) -> dict[str, Any]:
        """The current run's metrics, or an ArtifactError naming the train command."""
        fix = f"Train it first: toolkit train --exp {self.name} --artifacts {self.root}"
        if not self.model.is_file() or not self.metrics.is_file():
            raise ArtifactError(f"{self.name} has no trained run under {self.root}. {fix}")
        return read_json(self.metrics, what="metrics", fix=fix)


def spec_artifacts(name: str, root: Path | None = None) -> SpecArtifacts:
    return SpecArtifacts(resolve_root(root), name)


def trained_specs(root: Path | None = None) -> list[str]:
    """Names of specs with a current run under the root, sorted."""
    base = resolve_root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if SpecArtifacts(base, p.name).is_trained())


def bench_dir(root: Path | None = None) -> Path:
    return resolve_root(root) / "bench"


# ---------------------------------------------------------------- runs


# Bump when a code change alters what a run trains (data order, augmentation, loss, ...), so that
# runs of an older recipe are never reused as if they were this one's.
# 2: per-epoch stateless shuffle keyed by (seed, epoch), exact data order on --resume.
TRAINING_RECIPE = 2


def make_manifest(spec, *, seed: int, epochs: int, limit_train: int | None,
                  data_checksums: dict[str, str], mixed_precision: str = "off", variant: str | None = None,
                  teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies a run: reuse a run only when every field here matches. JSON-normalised
    (tuples become lists) so it compares equal to the copy read back from metrics.json.

    `mixed_precision` is the resolved mode (toolkit.precision); float32 ("off") adds nothing, so
    float32 manifests and run ids are exactly those of runs trained before the option existed.
    `variant` tags a recipe other than the spec's own; `teacher` is the run a student distils
    from (both absent for the seed's specs, whose manifests are unchanged)."""
    manifest: dict[str, Any] = {
        "spec_name": spec.name,
        "recipe": TRAINING_RECIPE,
        "spec": spec.summary(),
        "seed": seed,
        "epochs": epochs,
        "limit_train": limit_train,
        "data": dict(sorted(data_checksums.items())),
        "run_id": run_id(seed, epochs, limit_train, mixed_precision, variant),
    }
    if teacher is not None:
        manifest["teacher"] = teacher
    if mixed_precision != "off":
        manifest["mixed_precision"] = mixed_precision
    return json.loads(json.dumps(manifest))


def completed_run(arts: SpecArtifacts, manifest: dict[str, Any]) -> Path | None:
    """The completed run directory whose manifest matches, or None. Shared by train,
    sweeps and stability analyses: the one rule for reusing a run."""
    rdir = arts.run_dir(manifest["run_id"])
    if not all((rdir / f).is_file() for f in RUN_FILES):
        return None
    try:
        recorded = json.loads((rdir / "metrics.json").read_text())["manifest"]
    except (OSError, ValueError, KeyError):
        return None
    return rdir if recorded == manifest else None


def promote(arts: SpecArtifacts, rdir: Path) -> None:
    """Make a completed run the spec's current run; metrics.json last marks it complete. An
    optional file the run lacks is removed from the current run, never left from another run."""
    with exclusive_lock(arts.dir / ".current.lock", what=f"{arts.name} current run", wait=True):
        for name in OPTIONAL_RUN_FILES:
            if (rdir / name).is_file():
                link_or_copy(rdir / name, arts.dir / name)
            else:
                (arts.dir / name).unlink(missing_ok=True)
        for name in RUN_FILES:
            link_or_copy(rdir / name, arts.dir / name)


def sibling_runs(arts: SpecArtifacts, manifest: dict[str, Any]) -> list[Path]:
    """Completed runs of the spec trained with one recipe: every manifest field equal to
    `manifest`'s except the seed (and the run id naming it). Sorted by seed."""
    def recipe(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k not in ("seed", "run_id")}

    wanted = recipe(manifest)
    found: list[tuple[int, Path]] = []
    if not arts.runs_dir.is_dir():
        return []
    for rdir in arts.runs_dir.iterdir():
        if rdir.name.startswith(".") or not all((rdir / f).is_file() for f in RUN_FILES):
            continue
        try:
            recorded = json.loads((rdir / "metrics.json").read_text())["manifest"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(recorded, dict) and recipe(recorded) == wanted:
            found.append((int(recorded.get("seed", 0)), rdir))
    return [p for _, p in sorted(found)]


# ---------------------------------------------------------------- per-image predictions


def save_predictions(target: Path, top1: Any) -> dict[str, Any]:
    """Write top-1 classes (uint8 [N], about 10 KB for the test set) atomically as .npy; returns
    the reference a record keeps: {"file": name, "sha256": ..., "images": N}."""
    import numpy as np

    arr = np.asarray(top1)
    if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise ValueError(f"top-1 predictions must be a 1-D array of classes 0..255, got shape {arr.shape}")
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.uint8), allow_pickle=False)
    data = buf.getvalue()
    write_bytes(target, data)
    return {"file": target.name, "sha256": hashlib.sha256(data).hexdigest(), "images": int(arr.size)}


def load_predictions(path: Path, reference: dict[str, Any] | None = None) -> Any:
    """The uint8 array saved by `save_predictions`; with `reference`, its sha256 and length must
    match it (a file replaced or truncated since its record was written is an ArtifactError)."""
    import numpy as np

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: per-image predictions not found") from None
    if reference is not None and reference.get("sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise ArtifactError(f"{path}: per-image predictions changed since their record was written")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: per-image predictions are corrupted ({exc})") from None
    if arr.ndim != 1 or arr.dtype != np.uint8:
        raise ArtifactError(f"{path}: expected uint8 [N] top-1 classes, found {arr.dtype} {list(arr.shape)}")
    if reference is not None and reference.get("images") not in (None, arr.size):
        raise ArtifactError(f"{path}: {arr.size} predictions, its record says {reference['images']}")
    return arr
