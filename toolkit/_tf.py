"""Import TensorFlow/Keras once, without the C++ start-up chatter on stderr.

TF 2.21 prints oneDNN/absl notices before its logging honours TF_CPP_MIN_LOG_LEVEL, so the
import runs with file descriptor 2 pointed at /dev/null (unless TOOLKIT_VERBOSE is set).
Only modules that really need TensorFlow import this, and only when they run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    if os.environ.get("TOOLKIT_VERBOSE") or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tf():
    """(tensorflow, keras), imported quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr():
        import keras
        import tensorflow as tf
    return tf, keras


tf, keras = import_tf()
