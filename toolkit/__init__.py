"""fashion-mnist-toolkit: train, export, verify and benchmark Fashion-MNIST classifiers.

Importing this package must stay cheap and must not import TensorFlow: deployment and GPU
benchmark hosts may only have ONNX Runtime or LiteRT installed.
"""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
