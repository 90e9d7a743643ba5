"""The Keras runtimes: model.keras called as a compiled tf.function (`keras`) or through
`model.predict` (`keras-predict`, as users call it). Imports TensorFlow when a model loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.core.errors import DeviceUnavailableError
from toolkit.runtimes.base import LoadedModel, dtype_name


class KerasModel(LoadedModel):
    """model.keras run as a compiled function (`compiled`) or through `model.predict`."""

    def __init__(self, path: Path, *, predict: bool, device: str, threads: int | None) -> None:
        from toolkit.core.tf import tf
        from toolkit.specs.models import load_model

        if device != "cpu":
            raise DeviceUnavailableError(
                "the Keras runtime runs on CPU here (tensorflow-cpu); use onnxruntime-cuda for GPU"
            )
        self.model = load_model(path)
        self.runtime = "keras-predict" if predict else "keras"
        self.provider = f"tensorflow {tf.__version__} CPU"
        self.device, self.threads = device, threads
        inp, out = self.model.inputs[0], self.model.outputs[0]
        self.input_count = len(self.model.inputs)
        self.input_name, self.input_shape = inp.name, tuple(inp.shape)
        self.input_dtype = dtype_name(inp.dtype)
        self.output_names = tuple(self.model.output_names)
        self.output_dtype, self.output_shape = dtype_name(out.dtype), tuple(out.shape)
        self._predict = predict
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._predict:
            return self.model.predict(batch, batch_size=max(1, min(len(batch), 1024)), verbose=0)
        return self._call(batch).numpy()
