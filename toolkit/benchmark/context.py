"""What every case of one benchmark run shares: the real test images it feeds, the Keras (or ONNX)
reference its outputs are checked against, the versions, TensorFlow's thread count.

    ctx = BenchContext.create(root)          # real test images, reference, versions

A host without the dataset (a GPU box) times on seeded noise, which times the same; an explicit
data source that fails is an error, never replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit import runtimes
from toolkit.benchmark.plan import DEFAULT_SECONDS, BenchCase
from toolkit.core import artifacts
from toolkit.core.contract import CLASSIFIER
from toolkit.core.errors import DataError
from toolkit.core.machine import cpu_count, package_versions

CHECK_IMAGES = 64  # images per call whose top-1 is compared with the reference


def configure_tf_threads(threads: int) -> int:
    """Set TensorFlow's intra-op threads before its runtime starts; returns the count in force.

    Once TF has run anything the count is fixed for the process; then the current one is returned.
    """
    from toolkit.core.tf import tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
    return tf.config.threading.get_intra_op_parallelism_threads() or cpu_count()


def tensorflow_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def bench_images(n_images: int) -> tuple[np.ndarray, str]:
    """The first `n_images` Fashion-MNIST test images in the model contract, and where they came
    from. A host without the dataset (a GPU box) times on seeded noise, which times the same;
    but an explicit source (--data-dir / TOOLKIT_DATA_DIR) that fails is an error, never replaced."""
    from toolkit.core.data import load, resolve_data_dir, to_model_input

    try:
        return to_model_input(load().x_test[:n_images]), f"the first {n_images} Fashion-MNIST test images"
    except DataError as exc:
        if resolve_data_dir()[0] is not None:
            raise
        noise = np.random.default_rng(0).random((n_images, *CLASSIFIER.input.shape[1:]), dtype=np.float32)
        return noise, f"seeded uniform noise (dataset unavailable: {exc.message.splitlines()[0][:100]})"


@dataclass
class BenchContext:
    """What every case of one run shares: inputs, references, versions, where results go."""

    root: Path
    images: np.ndarray  # float32 [M,28,28,1] in [0,1]
    inputs_source: str
    references: dict[str, np.ndarray | None] = field(default_factory=dict)
    reference_source: dict[str, str] = field(default_factory=dict)
    keras_threads: int | None = None  # TensorFlow's thread count in this process, once set
    versions: dict[str, str] = field(default_factory=package_versions)
    seconds: float = DEFAULT_SECONDS

    @classmethod
    def create(cls, root: Path | None = None, *, seconds: float = DEFAULT_SECONDS,
               n_images: int = 256) -> BenchContext:
        images, source = bench_images(n_images)
        return cls(root=artifacts.resolve_root(root), images=images, inputs_source=source, seconds=seconds)

    def batch_inputs(self, batch: int) -> list[np.ndarray]:
        """Inputs a case cycles through: 64 single images at batch 1, else one batch of `batch`."""
        if batch == 1:
            return [np.ascontiguousarray(self.images[i : i + 1])
                    for i in range(min(CHECK_IMAGES, len(self.images)))]
        reps = -(-batch // len(self.images))
        return [np.ascontiguousarray(np.concatenate([self.images] * reps)[:batch])]

    def reference(self, case: BenchCase, cases: Sequence[BenchCase] = ()) -> np.ndarray | None:
        """Top-1 classes of the spec's reference on the first CHECK_IMAGES images (trained only);
        for a test-time-augmentation file, of the reference under the same flip averaging."""
        if not case.trained:
            return None
        key = reference_key(case)
        if key not in self.references:
            self.references[key], self.reference_source[key] = self._compute_reference(case, cases)
        return self.references[key]

    def _compute_reference(self, case: BenchCase,
                           cases: Sequence[BenchCase]) -> tuple[np.ndarray | None, str]:
        images = self.images[:CHECK_IMAGES]
        keras_path = artifacts.spec_artifacts(case.spec, self.root).model
        flip = reference_key(case) != case.spec
        if tensorflow_available() and keras_path.is_file():
            model, source = runtimes.load(keras_path, "keras"), "Keras model.keras"
        elif onnx := [c for c in cases if c.spec == case.spec and c.key == "onnx-fp32"]:
            model = runtimes.load(onnx[0].path, "onnxruntime", threads=1)
            source = "onnx-fp32 on ONNX Runtime CPU (TensorFlow not installed here)"
        else:
            return None, "none (no TensorFlow and no onnx-fp32 export): top-1 not checked"
        probabilities = model.run(images)
        if flip:
            from toolkit.export.tta import mirror

            probabilities = (probabilities + model.run(mirror(images))) / 2
            source += ", averaged with its mirror image's output (the file's flip TTA)"
        return np.argmax(probabilities, axis=1), source


def reference_key(case: BenchCase) -> str:
    """Which reference a case's top-1 is checked against: the spec's, or for a flip TTA file the
    spec's under the same averaging (its predictions differ from the plain model's by design)."""
    from toolkit.export.registry import FORMATS

    fmt = FORMATS.get(case.key)
    return f"{case.spec}+flip" if fmt is not None and fmt.tta else case.spec
