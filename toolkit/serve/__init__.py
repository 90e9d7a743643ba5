"""Serve a spec's export and its recommender over HTTP (`toolkit serve`).

    state = build_state(ServeSettings(exp="CNN_1L_Dropout_Exp6"))   # loads; exit 4/5 on bad exports
    run(state, settings)                                           # uvicorn until Ctrl-C (exit 130)

Modules: loading (which export, parity, the recommender), uploads (bodies to pixels), batching
(dynamic batching), metrics (Prometheus), app (FastAPI routes and the page), connections (the read
timeout and connection bound on uvicorn's protocol), server (uvicorn).
Nothing here imports TensorFlow: a serving host needs only ONNX Runtime or LiteRT.
"""

from toolkit.serve.batching import BatchingSettings
from toolkit.serve.server import ServeSettings, build_state, run
from toolkit.serve.uploads import Limits

__all__ = ["BatchingSettings", "Limits", "ServeSettings", "build_state", "run"]
