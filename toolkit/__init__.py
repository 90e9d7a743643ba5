"""fashion-mnist-toolkit: train, export, verify and benchmark Fashion-MNIST classifiers.

Importing this package must stay cheap and must not import TensorFlow: deployment and GPU
benchmark hosts may only have ONNX Runtime or LiteRT installed.
"""

__version__ = "0.1.0"

from toolkit.core.contract import CLASS_NAMES  # noqa: E402  (after __version__, which contract reads)

__all__ = ["CLASS_NAMES", "__version__"]
