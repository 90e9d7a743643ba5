"""Deployment cost beyond latency: peak memory, load time and first-call latency of one file on
one runtime, each measured in a fresh child process (toolkit.benchmark.memchild) that imports
only that runtime, so no other runtime's memory pollutes the figures.

    result = measure(case, images)            # a MemoryResult (the child's answer, checked)
    write_memory_run(root, source=..., results=[...])   # ARTIFACTS/bench/<time>-memory-<source>-<pid>.json
    read_memory_runs(root)                    # every memory file, oldest first

The results file is a typed record of kind "memory" (schema_version 1):

    {"schema_version": 1, "kind": "memory", "source", "written_at", "machine", "versions",
     "results": [{<the case's fields>, "id", "peaks_mb": {stage: MB or null}, "rss_source",
                  "unavailable", "ms": {"import", "load", "first_call", "first_call_batch",
                  "cold_start"}, "pid", "imported", "measured_at", "load_avg_1m"}, ...]}

Stages (memchild.STAGES): python_numpy (a bare interpreter with numpy: baseline), runtime_imported
(the runtime imported, no model: baseline), loaded, serving_b1, serving_batch. A figure that
cannot be taken on a platform is null with `unavailable` saying why, never zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.benchmark.memchild import STAGES
from toolkit.benchmark.placement import HERE, SKIP, Environment, Placement, runtime_skip
from toolkit.benchmark.plan import KERAS_RUNTIMES, MEMORY, BenchCase
from toolkit.core import records
from toolkit.core.errors import ToolkitError
from toolkit.core.machine import load_average, package_versions

SCHEMA_VERSION = 1
WHAT = "memory benchmark results"
FIX = "Delete it and rerun `toolkit bench`"
CALLS_B1 = 50  # batch-1 calls served before the batch-1 peak is read
CALLS_BATCH = 5  # large-batch calls before the large-batch peak is read
CHILD_TIMEOUT_S = 600
TIMES = ("import", "load", "first_call", "first_call_batch", "cold_start")


@dataclass
class MemoryResult:
    case: BenchCase
    peaks_mb: dict[str, float | None]
    ms: dict[str, float | None]
    rss_source: str | None = None
    unavailable: str | None = None  # why the memory figures are missing, where they are
    pid: int | None = None
    imported: dict[str, bool] = field(default_factory=dict)
    measured_at: str | None = None
    load_avg_1m: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    timed: bool = True  # what the driver writes: a memory case always measures

    @property
    def id(self) -> str:
        return self.case.id

    def peak(self, stage: str) -> float | None:
        return self.peaks_mb.get(stage)

    def to_dict(self) -> dict[str, Any]:
        return {**self.case.to_dict(), "id": self.id, "peaks_mb": self.peaks_mb, "ms": self.ms,
                "rss_source": self.rss_source, "unavailable": self.unavailable, "pid": self.pid,
                "imported": self.imported, "measured_at": self.measured_at,
                "load_avg_1m": self.load_avg_1m, "versions": self.versions}

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path) -> MemoryResult:
        entry = records.Entry(doc, path=path, what=f"{WHAT} entry", fix=FIX)
        opt = entry.opt
        peaks, times = entry.req("peaks_mb", dict), entry.req("ms", dict)
        return cls(
            case=BenchCase.from_dict(doc, path=path),
            peaks_mb={s: _number(peaks.get(s)) for s in STAGES},
            ms={t: _number(times.get(t)) for t in TIMES},
            rss_source=opt("rss_source", str), unavailable=opt("unavailable", str), pid=opt("pid", int),
            imported=opt("imported", dict, {}), measured_at=opt("measured_at", str),
            load_avg_1m=opt("load_avg_1m", (int, float)), versions=opt("versions", dict, {}),
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- measuring


def measure(case: BenchCase, images: np.ndarray) -> MemoryResult:
    """Start a fresh child for `case`, feed it `images` (real test images, float32 [N,28,28,1]),
    and return what it measured. A child that fails is a ToolkitError naming the case."""
    with tempfile.TemporaryDirectory(prefix="toolkit-memory-") as tmp:
        inputs = Path(tmp) / "inputs.npy"
        np.save(inputs, np.ascontiguousarray(images, dtype=np.float32))
        job = {"runtime": case.runtime, "path": case.path, "threads": case.threads, "inputs": str(inputs),
               "batch": case.batch, "calls_b1": CALLS_B1, "calls_batch": CALLS_BATCH}
        answer, spawned = _run_child(job, case)
    if "error" in answer:
        raise ToolkitError(f"{case.id}: the memory child failed: {answer['error']}")
    times = {t: answer["ms"].get(t) for t in TIMES}
    if answer.get("first_answer_at") is not None:
        # Spawn to first answer: interpreter start, imports, load and the first call.
        times["cold_start"] = (answer["first_answer_at"] - spawned) * 1e3
    peaks = {s: answer["peaks_mb"].get(s) for s in STAGES}
    unavailable = None
    if peaks["python_numpy"] is None:
        unavailable = answer.get("rss_source") or "peak RSS unavailable on this platform"
    return MemoryResult(
        case=case, peaks_mb=peaks, ms=times, rss_source=None if unavailable else answer.get("rss_source"),
        unavailable=unavailable, pid=answer.get("pid"), imported=answer.get("imported", {}),
        measured_at=records.now(),
        load_avg_1m=load_average(), versions=package_versions(),
    )


def _run_child(job: dict[str, Any], case: BenchCase) -> tuple[dict[str, Any], float]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    spawned = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "toolkit.benchmark.memchild"], input=json.dumps(job),
                              capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ToolkitError(f"{case.id}: the memory child ran over {CHILD_TIMEOUT_S} s and was "
                           "stopped") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        ended = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else \
            f"exited with code {proc.returncode}"
        tail = (proc.stderr.strip().splitlines() or ["no error output"])[-1][:300]
        raise ToolkitError(f"{case.id}: the memory child {ended} without an answer ({tail})")
    return json.loads(lines[-1]), spawned


# ---------------------------------------------------------------- the results file


@dataclass
class MemoryRun:
    source: str
    results: list[MemoryResult]
    machine: dict[str, Any] = field(default_factory=dict)
    written_at: str | None = None
    path: Path | None = None


def write_memory_run(root: Path | None, *, source: str, results: list[MemoryResult]) -> Path:
    return records.write_bench_file(root, kind=MEMORY, schema_version=SCHEMA_VERSION, source=source,
                                    body={"results": [r.to_dict() for r in results]})


def read_memory_runs(root: Path | None, skipped: list[records.SkippedFile] | None = None) -> list[MemoryRun]:
    """Every memory file under ROOT/bench/, oldest first; other kinds are skipped (bad files: see
    toolkit.core.records.read_bench_files)."""
    files = records.read_result_files(root, MEMORY, reader_version=SCHEMA_VERSION, what=WHAT,
                                      parse=MemoryResult.from_dict, skipped=skipped)
    return [MemoryRun(source=file.source, results=results, machine=file.machine, written_at=file.written_at,
                      path=file.path) for file, results in files]


# ---------------------------------------------------------------- the kind


class MemoryKind:
    """A model file on a runtime (CPU): peak RSS serving batch 1 and the large batch, load time,
    first-call latency, and the two baselines, in a fresh child that imports only that runtime."""

    name = MEMORY
    repeatable = True
    isolated = True
    uses_peaks = False

    def needs_tensorflow(self, case: BenchCase) -> bool:
        return case.runtime in KERAS_RUNTIMES

    def place(self, case: BenchCase, env: Environment) -> Placement:
        if case.device != "cpu":
            return Placement(SKIP, reason="memory is measured on CPU only: a GPU's memory is not in the "
                                          "process's resident set")
        if case.runtime in KERAS_RUNTIMES and not env.tensorflow:
            return Placement(SKIP, reason="TensorFlow is not installed here (ONNX Runtime/LiteRT memory "
                                          "cases still run)")
        return (runtime_skip(case) if case.runtime not in KERAS_RUNTIMES else None) or Placement(HERE)

    def run(self, case: BenchCase, ctx: Any, *, timer: Any, cases: Sequence[BenchCase]) -> Any:
        return measure(case, ctx.images)

    def finish(self, result: Any, peaks: dict[str, Any] | None) -> None:
        return None

    def read(self, doc: dict[str, Any], *, path: Path | None) -> Any:
        return MemoryResult.from_dict(doc, path=path or Path("<memory child output>"))

    def write(self, root: Path, *, source: str, results: list[Any], peaks: dict[str, Any] | None,
              extra: dict[str, Any]) -> Path:
        return write_memory_run(root, source=source, results=results)


