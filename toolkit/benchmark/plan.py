"""Planning: which benchmark cases a request means (files x runtimes x devices x batches x threads).

Files come from each trained spec's model.keras and from its exports.json (through the typed
export record and the format registry, never by guessing paths or keys). A case names the file
it measures by path and sha256 (of the file on disk now) and carries the parity state of that
exact file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from toolkit import runtimes
from toolkit.core import artifacts, records
from toolkit.core.errors import UsageError
from toolkit.core.machine import cpu_count

KERAS_KEY = "keras-fp32"  # model.keras, benchmarked like an export
KERAS_RUNTIMES = ("keras", "keras-predict")
DEFAULT_BATCHES = (1, 256)
DEFAULT_THREADS = ("1", "all")
DEFAULT_SECONDS = 1.5  # timed seconds per case (rounds are planned from the warm-up)
# `toolkit bench` measures each case in this many processes (a 95% interval needs >= 2).
CLI_REPEATS = 3
FALLBACK_SPECS = ("CNN_1L_Dropout_Exp6", "DNN_1L_No_Dropout_Exp1")
GPU_IO_MODES = ("iobind", "e2e")  # input already on the device / host copies in the timed span
INFERENCE = "inference"
FALLBACK_ORIGIN = "temporary-untrained"  # cases of the fresh-clone fallback (files built on demand)
TRAINING = "training"  # toolkit.benchmark.training
TIME_TO_ACCURACY = "time-to-accuracy"  # toolkit.benchmark.time_to_accuracy: whole trainings, timed
MEMORY = "memory"  # deployment cost of a file on a runtime, each case in a fresh child process
MEMORY_BATCH = 256  # memory cases serve batch 1, then this batch
KINDS_DEFAULT = (INFERENCE,)
# What --bench-kind / --kind selects; memory cases come with --memory.
CASE_KINDS = (INFERENCE, TRAINING, TIME_TO_ACCURACY)


@dataclass(frozen=True)
class BenchCase:
    spec: str
    key: str  # "keras-fp32", "onnx-fp32", "tflite-int8", ...
    format: str
    precision: str
    runtime: str
    device: str
    batch: int
    threads: int
    path: str
    size_bytes: int
    sha256: str | None
    parity: str  # "pass" | "fail" | "not run" | "stale" | "reference" | "unknown"
    trained: bool
    origin: str = "artifacts"  # or "temporary-untrained" (the fresh-clone fallback)
    io: str = ""  # GPU only: "iobind" | "e2e"
    kind: str = INFERENCE  # which driver kind runs it (toolkit.benchmark.kinds.KINDS)
    repeat: int = 0  # which of the case's measurements (each repeat in another process)
    settings: str = ""  # a kind's own settings, as compact JSON (time-to-accuracy: seed, threshold...)

    @property
    def id(self) -> str:
        device = f"{self.device}-{self.io}" if self.io else self.device
        kind = "" if self.kind == INFERENCE else f"-{self.kind}"
        repeat = f"-r{self.repeat}" if self.repeat else ""
        return f"{self.spec}-{self.key}-{self.runtime}-{device}{kind}-b{self.batch}-t{self.threads}{repeat}"

    @property
    def identity(self) -> tuple:
        """What makes two results comparable: the same file on the same runtime and setting
        (the repeats of a case share it: they are measurements of one case)."""
        base = (self.spec, self.key, self.runtime, self.device, self.io, self.batch, self.threads)
        return base if self.kind == INFERENCE else (*base, self.kind, self.settings)

    def with_repeat(self, repeat: int) -> BenchCase:
        return replace(self, repeat=repeat)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, path: Path | None = None) -> BenchCase:
        """The case described by `doc` (a result or a worker job); a missing field is an
        ArtifactError naming the file (`path`) and the field."""
        where = path or Path("<benchmark worker job>")
        values: dict[str, Any] = {}
        for f in fields(cls):
            required = f.default is MISSING and f.default_factory is MISSING
            if f.name not in doc and not required:
                continue
            types = _FIELD_TYPES[f.name]
            if doc.get(f.name) is None and type(None) in types:
                values[f.name] = None
                continue
            values[f.name] = records.require(doc, f.name, types, path=where, what="benchmark case")
        return cls(**values)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "spec": (str,), "key": (str,), "format": (str,), "precision": (str,), "runtime": (str,),
    "device": (str,), "batch": (int,), "threads": (int,), "path": (str,), "size_bytes": (int,),
    "sha256": (str, type(None)), "parity": (str,), "trained": (bool,), "origin": (str,),
    "io": (str,), "kind": (str,), "repeat": (int,), "settings": (str,),
}


# ---------------------------------------------------------------- options


def parse_batches(values: Iterable[str | int] | None) -> list[int]:
    out: list[int] = []
    for part in _parts(values or DEFAULT_BATCHES):
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"batch sizes must be integers, got {part!r} (e.g. --batch 1,256)") from None
        if not 1 <= value <= 65536:
            raise UsageError(f"batch size must be in 1..65536, got {value}")
        out.append(value)
    return list(dict.fromkeys(out))


def parse_threads(values: Iterable[str | int] | None) -> list[int]:
    """'1', '2', 'all' (every core this process may use) -> sorted distinct counts."""
    cores = cpu_count()
    out: list[int] = []
    for part in _parts(values or DEFAULT_THREADS):
        if part.lower() in ("all", "max"):
            out.append(cores)
            continue
        try:
            value = int(part)
        except ValueError:
            raise UsageError(
                f"threads must be integers or 'all', got {part!r} (e.g. --threads 1,all)") from None
        if value < 1:
            raise UsageError(f"threads must be >= 1, got {value}")
        out.append(value)
    return sorted(set(out))


def parse_devices(device: str | None) -> tuple[str, ...]:
    device = (device or "all").lower()
    if device == "all":
        return runtimes.DEVICES
    if device not in runtimes.DEVICES:
        raise UsageError(f"unknown device {device!r}; valid: cpu, gpu, all")
    return (device,)


def _parts(values: Iterable[str | int]) -> list[str]:
    return [p.strip() for raw in values for p in str(raw).split(",") if p.strip()]


def _split(values: Iterable[str] | None) -> list[str]:
    return [p.lower() for p in _parts(values or ())]


def _matches(key: str, patterns: Sequence[str] | None) -> bool:
    if not patterns:
        return True
    fmt = key.split("-", 1)[0]
    return any(fnmatch.fnmatch(key, p) or p == fmt for p in patterns)


def validate_filters(formats: Iterable[str] | None, runtime_keys: Iterable[str] | None) -> None:
    from toolkit.export.registry import FORMATS

    keys = [KERAS_KEY, *FORMATS]
    for pattern in _split(formats):
        if not any(_matches(k, [pattern]) for k in keys):
            raise UsageError(
                f"no format matches {pattern!r}; valid: {', '.join(keys)} "
                "(or a format name: keras, onnx, tflite, openvino; globs allowed)"
            )
    for key in _split(runtime_keys):
        if not runtimes.get_runtime(key).timed:
            raise UsageError(f"--runtime {key}: its times on this host are not a device's, so the benchmarks "
                             f"do not time it; `toolkit parity` runs it and states its host time")


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Filters:
    """What a request keeps; every field None/empty means "all"."""

    exps: Sequence[str] | None = None
    formats: Sequence[str] | None = None
    runtime_keys: Sequence[str] | None = None
    devices: Sequence[str] = runtimes.DEVICES
    batches: Sequence[int] = DEFAULT_BATCHES
    threads: Sequence[int] = (1,)
    kinds: Sequence[str] = KINDS_DEFAULT  # add MEMORY for the deployment-cost cases

    def runtimes_for(self, candidates: Sequence[str]) -> list[str]:
        """The timed runtimes among `candidates` that the filter keeps (TFLM on this host is not
        timed: its host time says nothing of a microcontroller's)."""
        wanted = _split(self.runtime_keys)
        return [r for r in candidates if runtimes.get_runtime(r).timed and (not wanted or r in wanted)]

    def keeps_format(self, key: str) -> bool:
        return _matches(key, _split(self.formats))


def expand(base: dict[str, Any], runtime_keys: Sequence[str], filters: Filters) -> list[BenchCase]:
    """One file on each of its runtimes, devices, batches and thread counts; with MEMORY among
    the kinds, also one memory case per runtime on CPU (batch 1 then MEMORY_BATCH, at the
    largest thread count: how the file would serve)."""
    cases = []
    if INFERENCE in filters.kinds:
        cases += _expand_inference(base, runtime_keys, filters)
    if MEMORY in filters.kinds and "cpu" in filters.devices:
        cases += [BenchCase(**base, runtime=key, device="cpu", batch=MEMORY_BATCH,
                            threads=max(filters.threads), kind=MEMORY)
                  for key in runtime_keys if "cpu" in runtimes.get_runtime(key).devices]
    return cases


def _expand_inference(base: dict[str, Any], runtime_keys: Sequence[str], filters: Filters) -> list[BenchCase]:
    cases = []
    for key in runtime_keys:
        for device in runtimes.get_runtime(key).devices:
            if device not in filters.devices:
                continue
            # A GPU session's speed hardly depends on CPU threads: one count (all cores), two
            # ways of feeding it (input already on the device, and host copies in the clock).
            settings = ([(t, "") for t in filters.threads] if device == "cpu"
                        else [(max(filters.threads), io) for io in GPU_IO_MODES])
            cases += [BenchCase(**base, runtime=key, device=device, batch=batch, threads=n, io=io)
                      for batch in filters.batches for n, io in settings]
    return cases


def plan_cases(root: Path | None, filters: Filters) -> list[BenchCase]:
    """Every trained file under `root` that the filters keep, on every runtime and setting."""
    from toolkit.export.record import read_exports
    from toolkit.export.registry import FORMATS
    from toolkit.specs import match_specs

    validate_filters(filters.formats, filters.runtime_keys)
    names = artifacts.trained_specs(root)
    if filters.exps:
        allowed = {s.name for s in match_specs(list(filters.exps))}
        names = [n for n in names if n in allowed]
    cases: list[BenchCase] = []
    for name in names:
        arts = artifacts.spec_artifacts(name, root)
        rts = filters.runtimes_for(KERAS_RUNTIMES)
        if rts and filters.keeps_format(KERAS_KEY):
            base = dict(spec=name, key=KERAS_KEY, format="keras", precision="fp32", path=str(arts.model),
                        size_bytes=arts.model.stat().st_size, sha256=artifacts.sha256_file(arts.model),
                        parity="reference", trained=True)
            cases += expand(base, rts, filters)
        for entry in read_exports(arts).exports:
            fmt = FORMATS.get(entry.key)
            path = arts.dir / entry.path
            if fmt is None or not filters.keeps_format(fmt.key):
                continue
            if not entry.exported or not path.is_file():
                continue  # failed or gone: `toolkit export` recreates it; the report says so
            sha = artifacts.sha256_file(path)
            base = dict(spec=name, key=fmt.key, format=fmt.format, precision=fmt.precision, path=str(path),
                        size_bytes=artifacts.model_bytes(path), sha256=sha, trained=True)
            # Each runtime carries its own parity row's state (OpenVINO's bf16 row is not the file's
            # ONNX Runtime row).
            for runtime in filters.runtimes_for(fmt.runtimes):
                cases += expand({**base, "parity": entry.runtime_state(runtime, sha)}, [runtime], filters)
    return cases


def plan_fallback_cases(folder: Path, filters: Filters) -> list[BenchCase]:
    """Cases for untrained models of the default specs, to be exported under `folder` by
    toolkit.benchmark.fallback.build_fallback (untrained weights time the same as trained ones)."""
    from toolkit.export.registry import FORMATS
    from toolkit.specs import get_spec, match_specs

    validate_filters(filters.formats, filters.runtime_keys)
    specs = match_specs(list(filters.exps)) if filters.exps else [get_spec(n) for n in FALLBACK_SPECS]
    cases: list[BenchCase] = []
    for spec in specs:
        common = dict(spec=spec.name, size_bytes=0, sha256=None, trained=False, origin=FALLBACK_ORIGIN)
        rts = filters.runtimes_for(KERAS_RUNTIMES)
        if rts and filters.keeps_format(KERAS_KEY):
            base = dict(common, key=KERAS_KEY, format="keras", precision="fp32", parity="reference",
                        path=str(folder / spec.name / "model.keras"))
            cases += expand(base, rts, filters)
        for fmt in FORMATS.values():
            if filters.keeps_format(fmt.key):
                base = dict(common, key=fmt.key, format=fmt.format, precision=fmt.precision,
                            parity="unknown", path=str(folder / spec.name / fmt.filename))
                cases += expand(base, filters.runtimes_for(fmt.runtimes), filters)
    return cases
