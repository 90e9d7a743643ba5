"""Import TensorFlow/Keras once, without the C++ start-up chatter on stderr.

TF 2.21 prints oneDNN/absl notices before its logging honours TF_CPP_MIN_LOG_LEVEL, so the
import runs with file descriptor 2 pointed at /dev/null (unless TOOLKIT_VERBOSE is set).
Only modules that really need TensorFlow import this, and only when they run.
"""

from __future__ import annotations

import os

from toolkit.core.quiet import quiet_stderr


def import_tf():
    """(tensorflow, keras), imported quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_stderr():
        import keras
        import tensorflow as tf
    return tf, keras


tf, keras = import_tf()
