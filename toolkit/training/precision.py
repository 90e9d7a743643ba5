"""Mixed-precision training modes: what this machine computes fast, and which Keras policy a mode is.

    mode = resolve("auto")          # "bf16" on a CPU with AVX-512 BF16 / AMX-BF16, else "off"
    with policy_scope(mode): model = build_model(spec)     # bf16 compute, float32 variables
    saved = float32_copy(model, build=...)                 # what model.keras holds

Modes: "bf16" (Keras `mixed_bfloat16`), "fp16" (`mixed_float16`, with Keras' loss scaling) and
"off" (float32, the study's exact recipe). "auto" is resolved once per run, before anything is
recorded, so the run id, the manifest, metrics.json and the progress header name "bf16", "fp16"
or "off", never "auto". Variables stay float32 in every mode and the softmax output is float32
(toolkit.models builds the output layer in float32), so a mode changes the arithmetic of
training only: the saved model and every export keep the float32 contract.

Capabilities come from the CPU flags in /proc/cpuinfo (avx512_bf16 or amx_bf16 for bf16; amx_fp16
for fp16, untested: AVX512-FP16 alone trains ~500x slower than float32 here) and from the GPUs
TensorFlow sees, which it trains on by default: compute capability 8.0 or newer has bf16 tensor
cores (auto picks bf16: no loss scaling needed), 7.x has fp16 ones (auto picks fp16). The GPU
path is untested (no GPU on the development machines has TensorFlow).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from toolkit.core.contract import MIXED_PRECISION_MODES
from toolkit.core.errors import ToolkitError, UsageError
from toolkit.core.machine import cpu_flags

MODES = MIXED_PRECISION_MODES  # what a spec or --mixed-precision may say
RESOLVED = ("bf16", "fp16", "off")
POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16", "off": "float32"}
# CPU flags under which TensorFlow's oneDNN kernels train fast in each type. fp16 needs AMX-FP16:
# with AVX512-FP16 alone (this project's Xeon) mixed_float16 training measured ~500x slower than
# float32 (TensorFlow emulates the type), so that CPU does not count as having fast fp16.
CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("amx_fp16",)}
# Compute capability from which a GPU has tensor cores of each type.
GPU_MIN_CAPABILITY = {"bf16": (8, 0), "fp16": (7, 0)}


@dataclass(frozen=True)
class Capabilities:
    """What this machine computes fast: CPU flags, and the GPU TensorFlow would train on."""

    cpu_flags: frozenset[str]
    gpu_name: str | None = None
    gpu_capability: tuple[int, int] | None = None

    def cpu_has(self, mode: str) -> bool:
        return any(flag in self.cpu_flags for flag in CPU_FLAGS.get(mode, ()))

    def gpu_has(self, mode: str) -> bool:
        if self.gpu_name is None or mode not in GPU_MIN_CAPABILITY:
            return False
        return (self.gpu_capability or (0, 0)) >= GPU_MIN_CAPABILITY[mode]

    def supports(self, mode: str) -> bool:
        """TensorFlow trains on its GPU when it sees one, so the GPU decides there, else the CPU."""
        if mode == "off":
            return True
        return self.gpu_has(mode) if self.gpu_name else self.cpu_has(mode)

    def supported(self) -> list[str]:
        return [m for m in RESOLVED if self.supports(m)]

    def fastest(self) -> str:
        """What `auto` means here: bf16 before fp16 (no loss scaling), else float32."""
        return next((m for m in ("bf16", "fp16") if self.supports(m)), "off")

    def explain(self) -> str:
        """Where the fast types come from, for the progress header and error messages."""
        if self.gpu_name:
            cc = ".".join(map(str, self.gpu_capability)) if self.gpu_capability else "unknown"
            return f"GPU {self.gpu_name} (compute capability {cc})"
        flags = [f for mode in ("bf16", "fp16") for f in CPU_FLAGS[mode] if f in self.cpu_flags]
        return f"CPU with {', '.join(flags)}" if flags else "CPU without fast bf16/fp16 training"


def _gpu() -> tuple[str | None, tuple[int, int] | None]:
    from toolkit.core.tf import tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None, None
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    return details.get("device_name", gpus[0].name), tuple(capability) if capability else None


@functools.lru_cache(maxsize=1)
def detect() -> Capabilities:
    """This machine's capabilities (cached: they do not change while a process runs)."""
    name, capability = _gpu()
    return Capabilities(cpu_flags(), name, capability)


def resolve(mode: str, caps: Capabilities | None = None) -> str:
    """`mode` as the run will train: "bf16", "fp16" or "off". An unknown mode, or one the
    hardware lacks, is a UsageError saying what this machine supports and what to pass instead."""
    value = (mode or "").strip().lower()
    if value == "off":
        return value
    caps = caps or detect()
    if value == "auto":
        return caps.fastest()
    fast = [m for m in caps.supported() if m != "off"]
    instead = f"pass --mixed-precision {' or '.join([*fast, 'auto', 'off'])}"
    if value not in MODES:
        raise UsageError(f"unknown --mixed-precision {mode!r}; expected one of {', '.join(MODES)}. This "
                         f"machine (a {caps.explain()}) supports {', '.join(caps.supported())}: {instead}")
    if not caps.supports(value):
        need = (f"a GPU of compute capability {'.'.join(map(str, GPU_MIN_CAPABILITY[value]))} or newer"
                if caps.gpu_name else f"a CPU with {' or '.join(CPU_FLAGS[value])}")
        raise UsageError(f"--mixed-precision {value} needs {need}; this machine has a {caps.explain()}, "
                         f"which supports {', '.join(caps.supported())}: {instead}")
    return value


def describe(mode: str, caps: Capabilities | None = None) -> str:
    """One line for the progress header: the resolved mode, its policy and why."""
    if mode == "off":
        return "mixed precision off (float32, the exact recipe)"
    caps = caps or detect()
    return (f"mixed precision {mode} ({POLICIES[mode]}: {mode} compute, float32 variables and "
            f"softmax; {caps.explain()})")


# ---------------------------------------------------------------- Keras policies


@contextlib.contextmanager
def policy_scope(mode: str) -> Iterator[None]:
    """Build (and compile) models under `mode`'s Keras policy; the global policy is restored
    after, so nothing else in the process (exports, a sweep's next run) inherits it."""
    from toolkit.core.tf import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[mode])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def check_float32_contract(model: Any) -> None:
    """Variables and the output stay float32 in every mode (what the exports rely on)."""
    wrong = [v.path for v in model.weights if v.dtype != "float32"]  # weights: not the seed states
    out = model.outputs[0].dtype if getattr(model, "outputs", None) else "float32"
    if wrong or out != "float32":
        raise ToolkitError(
            f"model {model.name} breaks the float32 contract under mixed precision (non-float32 "
            f"variables: {wrong[:3]}, output dtype {out}); build its output layer with dtype='float32'"
        )


def float32_copy(model: Any, build: Callable[[], Any]) -> Any:
    """`model` (trained under a mixed policy) as a float32 model with the same weights and the same
    optimizer state, so that model.keras and every export are what a float32 run would save.

    `build` makes the same architecture, compiled as training compiled it; it is called under
    the float32 policy. Variables are float32 in every mode, so the copy is exact.
    """
    with policy_scope("off"):
        copy = build()
    for target, source in zip(copy.variables, model.variables, strict=True):
        target.assign(source.numpy())
    source_opt = base_optimizer(model.optimizer)
    if source_opt is not None and source_opt.variables:
        copy.optimizer.build(copy.trainable_variables)
        for target, source in zip(copy.optimizer.variables, source_opt.variables, strict=True):
            if _leaf(target.path) != _leaf(source.path) or tuple(target.shape) != tuple(source.shape):
                raise ToolkitError(f"optimizer variables differ: {target.path} vs {source.path}")
            target.assign(source.numpy())
    return copy


def training_optimizer(name: str, mode: str) -> Any:
    """The optimizer a run in `mode` compiles with: the spec's own by name in float32 (the exact
    recipe), and for Adam under a mixed policy, Keras' Adam with TensorFlow's fused update."""
    if mode == "off" or name != "adam":
        return name
    return _fused_adam_class()()


@functools.lru_cache(maxsize=1)
def _fused_adam_class() -> type:
    from toolkit.core.tf import keras, tf

    class FusedAdam(keras.optimizers.Adam):
        """Keras' Adam whose per-variable update is TensorFlow's one fused kernel (ResourceApplyAdam)
        instead of about ten element-wise passes over each variable: the same formula, a third of
        the CPU time on Exp6's 11 M parameters, where the bf16 step is short enough for the update
        to matter. (1 - beta) rounds differently in its last bit, so float32 runs keep Keras' own
        update and reproduce earlier runs exactly. Never saved: model.keras holds the stock Adam
        (float32_copy), with the same variables (momentum, velocity, iteration)."""

        def update_step(self, gradient, variable, learning_rate):
            if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
                return super().update_step(gradient, variable, learning_rate)
            dtype = variable.dtype
            step = tf.cast(self.iterations + 1, dtype)
            index = self._get_variable_index(variable)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
                beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
                beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
                lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype),
                beta2=tf.cast(self.beta_2, dtype), epsilon=tf.cast(self.epsilon, dtype),
                grad=tf.cast(gradient, dtype), use_locking=False)

    return FusedAdam


def base_optimizer(optimizer: Any) -> Any:
    """The optimizer itself, without Keras' loss-scale wrapper of mixed_float16."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _leaf(path: str) -> str:
    # Layer and optimizer names get numbered suffixes per process (adam, adam_1); leaves do not.
    return path.rsplit("/", 1)[-1]
