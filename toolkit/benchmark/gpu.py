"""GPU cases: prove every node runs on CUDA (never report a CPU fallback as a GPU time) and feed
the session with inputs already on the device (IO binding) or from the host (end to end)."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import runtimes
from toolkit.core.errors import DeviceUnavailableError
from toolkit.core.machine import gpu_name


def profiled_node_providers(session_factory: Callable[[Any], Any], feed: dict[str, np.ndarray]) -> Counter:
    """Run once with ONNX Runtime profiling on; count the nodes each execution provider ran.

    `session_factory(options)` builds the session from the given SessionOptions, so the check
    profiles exactly the providers and settings the benchmark uses.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="toolkit-ort-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = session_factory(options)
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    providers: Counter = Counter()
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            providers[args["provider"]] += 1
    return providers


def require_gpu_execution(session_providers: Sequence[str], node_providers: Counter) -> None:
    """Refuse anything that is not CUDA all the way: a CPU session, or any node run on CPU."""
    if not session_providers or session_providers[0] != "CUDAExecutionProvider":
        raise DeviceUnavailableError(
            f"not GPU: the session's providers are {list(session_providers)}; a CPU fallback must not "
            "be reported as a GPU time. Install the `gpu` extra on a host with CUDA"
        )
    if not node_providers:
        raise DeviceUnavailableError("not GPU: the ONNX Runtime profile recorded no node executions")
    others = {p: n for p, n in node_providers.items() if p != "CUDAExecutionProvider"}
    if others:
        raise DeviceUnavailableError(
            f"not GPU: {sum(others.values())} of {sum(node_providers.values())} nodes ran on "
            f"{', '.join(sorted(others))}; refusing to report a CPU fallback as a GPU time"
        )


def check_gpu_session(path: str | Path, session, feed: dict[str, np.ndarray], threads: int | None) -> Counter:
    """Profile a second session built like `session` and require every node on CUDA."""
    import onnxruntime as ort

    def factory(options):
        base = runtimes.ort_session_options(threads)
        options.intra_op_num_threads = base.intra_op_num_threads
        options.graph_optimization_level = base.graph_optimization_level
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return ort.InferenceSession(str(path), sess_options=options, providers=["CUDAExecutionProvider"])

    nodes = profiled_node_providers(factory, feed)
    require_gpu_execution(session.get_providers(), nodes)
    return nodes


def prepare_gpu(*, case, model, inputs: list[np.ndarray], notes: dict[str, Any]):
    """(call, fetch) for a GPU case, after proving the session runs on CUDA only."""
    import onnxruntime as ort

    session = model.session
    nodes = check_gpu_session(case.path, session, {model.input_name: inputs[0]}, case.threads)
    notes.update(gpu=gpu_name(), gpu_nodes=dict(nodes), gpu_check="all nodes on CUDAExecutionProvider")
    if case.io == "e2e":  # host array in, host array out: the copies are inside the clock
        return (lambda i: model.run(inputs[i % len(inputs)])), (lambda out: out)
    bindings = []
    for x in inputs:
        binding = session.io_binding()
        binding.bind_ortvalue_input(model.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(model.output_names[0], "cuda")
        bindings.append(binding)

    def call(i: int):
        binding = bindings[i % len(bindings)]
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the clock stops only after the device finished
        return binding

    return call, (lambda b: b.copy_outputs_to_cpu()[0])
