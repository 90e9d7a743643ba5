"""The fresh child process of a memory case: `python -m toolkit.benchmark.memchild`.

It imports numpy, then only the one runtime it measures (its registry entry's `preload`
modules and toolkit.runtimes), loads the file, serves batch 1, then the large batch, and
reads its own peak resident memory (VmHWM) after each stage. VmHWM only grows, so the reading
after a stage is exactly what a process that stopped there would show: the first two
readings are the baselines (a bare interpreter with numpy; the runtime imported with no model
loaded), taken in the same fresh process that then loads the model.

Job (one JSON object on stdin): {"runtime", "path" (null: stop after the baselines),
"threads", "inputs" (a .npy of float32 [N,28,28,1] real test images), "batch", "calls_b1",
"calls_batch", "spawned_at" (the parent's time.time() just before it started this process)}.
Answer: one JSON line on stdout. Nothing of the toolkit beyond its light modules is imported
here, and nothing from the parent's memory reaches this process (exec starts a new address
space, so VmHWM starts from zero).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

STAGES = ("python_numpy", "runtime_imported", "loaded", "serving_b1", "serving_batch")
# Heavy libraries whose presence in sys.modules is reported, so a test can see that a child
# imported only its own runtime.
WATCHED = ("tensorflow", "keras", "onnxruntime", "ai_edge_litert", "openvino", "torch", "jax")


def peak_rss_mb() -> tuple[float | None, str]:
    """(peak resident set size in MB, where it came from); (None, why) where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6, "VmHWM (/proc/self/status)"
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None, f"no /proc/self/status and no resource module on {sys.platform}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if peak <= 0:
        return None, f"getrusage reports no peak RSS on {sys.platform}"
    # Linux and the BSDs report kilobytes, macOS bytes.
    return (peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6), "ru_maxrss (getrusage)"


def _set_tf_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)


def measure(job: dict) -> dict:
    import numpy as np

    out: dict = {"pid": os.getpid(), "peaks_mb": {}, "ms": {}}
    inputs = np.load(job["inputs"])
    out["peaks_mb"]["python_numpy"], out["rss_source"] = peak_rss_mb()

    from toolkit import runtimes

    runtime = runtimes.get_runtime(job["runtime"])
    t0 = time.perf_counter()
    for module in runtime.preload:
        importlib.import_module(module)
    if job["runtime"] in runtimes.KERAS_KEYS:
        _set_tf_threads(job["threads"])
    out["ms"]["import"] = (time.perf_counter() - t0) * 1e3
    out["peaks_mb"]["runtime_imported"] = peak_rss_mb()[0]
    if job.get("path"):
        _serve(job, runtimes, inputs, out)
    out["imported"] = {name: name in sys.modules for name in WATCHED}
    return out


def _serve(job: dict, runtimes, inputs, out: dict) -> None:
    import numpy as np

    t0 = time.perf_counter()
    model = runtimes.load(job["path"], job["runtime"], threads=job["threads"])
    out["ms"]["load"] = (time.perf_counter() - t0) * 1e3
    out["peaks_mb"]["loaded"] = peak_rss_mb()[0]
    one = inputs[:1]
    t0 = time.perf_counter()
    first = model.run(one)
    out["ms"]["first_call"] = (time.perf_counter() - t0) * 1e3
    out["first_answer_at"] = time.time()
    out["first_top1"] = int(first.argmax())
    for i in range(job["calls_b1"]):
        model.run(inputs[i % len(inputs): i % len(inputs) + 1])
    out["peaks_mb"]["serving_b1"] = peak_rss_mb()[0]
    batch = inputs[: job["batch"]]
    if len(batch) < job["batch"]:
        batch = np.concatenate([inputs] * (-(-job["batch"] // len(inputs))))[: job["batch"]]
    t0 = time.perf_counter()
    model.run(batch)
    out["ms"]["first_call_batch"] = (time.perf_counter() - t0) * 1e3
    for _ in range(job["calls_batch"]):
        model.run(batch)
    out["peaks_mb"]["serving_batch"] = peak_rss_mb()[0]


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        answer = measure(job)
    except Exception as exc:  # reported to the parent as this case's error
        answer = {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
