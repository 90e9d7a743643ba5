"""Build Keras models from specs. Imports Keras: import this module lazily.

Every model keeps the contract (toolkit.contract): input `image` float32 [N,28,28,1] in [0,1];
output `probabilities` [N,10] (softmax). A layer is named `embedding`: its activations are the
penultimate features used by analyses and the recommender. Only stock layers are used, so
`keras.saving.load_model` needs no custom objects. The spec's family (toolkit.families) says
how its architecture becomes layers; training-time objects (optimizer, loss, augmentation)
come from its recipe (toolkit.fitting), never from here.
"""

from __future__ import annotations

from toolkit.core.contract import EMBEDDING_LAYER
from toolkit.core.tf import keras
from toolkit.specs import Spec


def build_model(spec: Spec) -> keras.Model:
    return spec.family_entry.build(spec.arch, spec.name)


def embedding_model(model: keras.Model) -> keras.Model:
    """A model sharing `model`'s weights: image -> penultimate-layer activations."""
    return keras.Model(model.inputs, model.get_layer(EMBEDDING_LAYER).output,
                       name=f"{model.name}_embedding")


def load_model(path, *, what: str = "model"):
    """Load a `.keras` file in safe mode; problems become an ArtifactError naming the file."""
    from pathlib import Path

    from toolkit.core.errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} not found. Train it first with `toolkit train`")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad zip/config
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ArtifactError(
            f"{path}: not a loadable Keras model ({reason}). "
            "Retrain it (toolkit train --exp NAME) or restore the file"
        ) from None
