"""Embeddings for the recommender: the L2-normalised activations of a trained spec's layer named
`embedding`, from model.keras ("keras") or from recommend/embedding.onnx on ONNX Runtime
("onnxruntime", which imports neither TensorFlow nor Keras unless it has to (re)export the file,
so it runs on hosts that only have ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.core import artifacts
from toolkit.core.contract import embedding_contract
from toolkit.core.errors import ArtifactError, UsageError
from toolkit.specs import get_spec

BACKENDS = ("keras", "onnxruntime")
EMBEDDING_ONNX = "embedding.onnx"
EMBED_BATCH = 1000

Progress = Callable[[str, int, int], None]  # (what, done, total)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # An all-zero embedding (every ReLU off) stays zero rather than becoming NaN.
    return x / np.where(norms > 0, norms, 1.0)


class Embedder:
    """Images float32 [N,28,28,1] in [0,1] -> L2-normalised embeddings float32 [N,D]."""

    backend: str = ""
    source_sha256: str = ""  # sha256 of the model.keras the embeddings come from
    path: Path | None = None

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, images: np.ndarray, progress: Progress | None = None,
              what: str = "embedding") -> np.ndarray:
        out = []
        for start in range(0, len(images), EMBED_BATCH):
            out.append(normalize(self._raw(np.ascontiguousarray(images[start:start + EMBED_BATCH]))))
            if progress:
                progress(what, min(start + EMBED_BATCH, len(images)), len(images))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class KerasEmbedder(Embedder):
    def __init__(self, model_path: Path, source_sha256: str) -> None:
        import warnings

        from toolkit.core.tf import tf
        from toolkit.specs.models import embedding_model, load_model

        self.backend, self.path, self.source_sha256 = "keras", model_path, source_sha256
        self.model = embedding_model(load_model(model_path))
        self.dim = int(self.model.outputs[0].shape[-1])
        warnings.filterwarnings("ignore", message=r".*structure of `inputs`.*")
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        return self._call(batch).numpy()


class OnnxEmbedder(Embedder):
    """recommend/embedding.onnx on ONNX Runtime (CPU), through toolkit.runtimes."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from toolkit import runtimes

        self.backend, self.path = "onnxruntime", path
        try:
            self.loaded = runtimes.load(path, runtime="onnxruntime", threads=threads,
                                        contract=embedding_contract())
        except ArtifactError as exc:  # a damaged file or another interface: `toolkit export` never writes it
            reason = exc.message.split(" Re-export it")[0].rstrip(".")
            raise type(exc)(f"{reason}; delete it: the next `toolkit recommend --exp NAME --onnx` "
                            "re-exports it") from None
        meta = self.loaded.session.get_modelmeta().custom_metadata_map
        self.source_sha256 = meta.get("source_model_sha256", "")
        self.dim = int(self.loaded.session.get_outputs()[0].shape[-1])

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        return self.loaded.run(batch)


def export_embedding_onnx(exp: str, root: Path | None = None) -> Path:
    """Export model.keras cut at `embedding` to recommend/embedding.onnx (needs TensorFlow)."""
    arts = artifacts.spec_artifacts(get_spec(exp).name, root)
    arts.require_trained()
    try:
        from toolkit.export.onnx import keras_to_onnx
        from toolkit.specs.models import embedding_model, load_model
    except ImportError as exc:
        raise ArtifactError(
            f"{arts.recommend_dir / EMBEDDING_ONNX} is missing or stale and cannot be exported here "
            f"({exc}). Export it on a machine with TensorFlow: toolkit recommend --exp {arts.name} "
            "--onnx --evaluate (or any --onnx query)"
        ) from None
    target = arts.recommend_dir / EMBEDDING_ONNX
    sha = artifacts.sha256_file(arts.model)
    contract = embedding_contract()
    keras_to_onnx(embedding_model(load_model(arts.model)), target, input_name=contract.input.name,
                  output_name=contract.output.name,
                  metadata={"source_model_sha256": sha, "spec": arts.name,
                            "contract": "image float32 [N,28,28,1] in [0,1] -> embedding [N,D] "
                                        "(penultimate activations, not normalised)"})
    return target


def get_embedder(exp: str, *, backend: str = "keras", root: Path | None = None,
                 threads: int | None = None) -> Embedder:
    """An embedder for the spec's current run. The ONNX file is (re)exported only when it is
    missing or was exported from another model.keras."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    arts = artifacts.spec_artifacts(get_spec(exp).name, root)
    current = artifacts.sha256_file(arts.model) if arts.model.is_file() else None
    if backend == "keras":
        arts.require_trained()
        return KerasEmbedder(arts.model, current or "")
    path = arts.recommend_dir / EMBEDDING_ONNX
    if path.is_file():
        embedder = OnnxEmbedder(path, threads)
        # Without model.keras (an ONNX-only host) the file is taken as it is.
        if current is None or embedder.source_sha256 == current:
            return embedder
    elif current is None:
        arts.require_trained()
    export_embedding_onnx(arts.name, root)
    return OnnxEmbedder(path, threads)
