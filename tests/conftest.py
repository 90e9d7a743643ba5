"""Shared fixtures: the real dataset and small models trained on real subsets, once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Small real subsets keep the suite fast on 2 cores; accuracy figures are not asserted on them
# beyond "better than chance".
TINY_LIMIT = 3000
TINY_SPECS = ("CNN_1L_Dropout_Exp6", "DNN_2L_Dropout_Exp2")
# Fixtures that train or convert real models, or start Ray. A test that uses one (directly or
# through another fixture) is marked slow, so `pytest -m 'not slow'` is the quick loop; tests
# that train or convert by themselves carry the mark explicitly.
SLOW_FIXTURES = {"trained_root", "local_root", "ray_instance"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def default_run_id(name: str, *, seed: int = 0, epochs: int = 1, limit_train: int | None = TINY_LIMIT) -> str:
    """The run id `train.train(name, ...)` gives without --mixed-precision: the spec's recipe,
    resolved on this machine (Exp6 trains in bf16 where the CPU has it, in float32 elsewhere)."""
    from toolkit import artifacts, precision
    from toolkit.specs import get_spec

    mode = precision.resolve(get_spec(name).mixed_precision)
    return artifacts.run_id(seed, epochs, limit_train, mode)


@pytest.fixture(scope="session")
def dataset():
    from toolkit import data

    return data.load()


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory) -> Path:
    """An artifacts root in which TINY_SPECS are trained (1 epoch, 3,000 real images)."""
    from toolkit import train

    root = tmp_path_factory.mktemp("artifacts")
    for name in TINY_SPECS:
        train.train(name, epochs=1, limit_train=TINY_LIMIT, root=root)
    return root


@pytest.fixture(scope="session")
def test_batch(dataset) -> tuple[np.ndarray, np.ndarray]:
    """The first 256 real test images in the model contract, with labels."""
    from toolkit.data import to_model_input

    return to_model_input(dataset.x_test[:256]), dataset.y_test[:256]
