"""Worker processes: cases that cannot run in the driver's process run in a fresh one.

TensorFlow fixes its thread count once per process, so `toolkit bench` runs the Keras cases of
each thread count in their own worker (and planned kinds will use workers for cold starts and
repeated measurements). The driver starts `python -m toolkit.benchmark.worker`, writes one JSON
job on its stdin and reads one JSON line per case from its stdout, as each case finishes, so a
worker that dies keeps everything it measured before (WorkerDied carries those outcomes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.benchmark.kinds import kind_of
from toolkit.benchmark.placement import CaseOutcome
from toolkit.benchmark.plan import BenchCase
from toolkit.core.errors import PartialFailure, ToolkitError


class WorkerDied(PartialFailure):
    """A worker process ended before reporting every case; `outcomes` holds those it reported."""

    def __init__(self, message: str, outcomes: list[CaseOutcome]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


def run_in_worker(cases: Sequence[BenchCase], *, root: Path, seconds: float, tf_threads: int | None = None,
                  label: str = "benchmark worker", on_outcome: Callable[[CaseOutcome], None] | None = None,
                  references: dict[str, list[int] | None] | None = None) -> list[CaseOutcome]:
    """Run `cases` in order in one fresh Python process; an outcome per case, reported as it ends."""
    job = {"root": str(root), "seconds": seconds, "tf_threads": tf_threads,
           "cases": [c.to_dict() for c in cases], "references": references or {}}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    by_id = {c.id: c for c in cases}
    outcomes: list[CaseOutcome] = []
    # stderr goes to a file: a chatty library filling a pipe nobody reads would block the worker.
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit.benchmark.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        for line in proc.stdout:
            if not line.startswith("{"):
                continue  # a library printing to stdout
            outcome = _parse(json.loads(line), by_id)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        code = proc.wait()
        err.seek(0)
        stderr = err.read()
    if len(outcomes) < len(cases):
        ended = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = (stderr.strip().splitlines() or ["no error output"])[-1][:300]
        raise WorkerDied(f"{label} {ended} after {len(outcomes)} of {len(cases)} cases ({tail}); "
                         "the cases it finished were kept", outcomes)
    return outcomes


def _parse(item: dict[str, Any], by_id: dict[str, BenchCase]) -> CaseOutcome:
    case = by_id[item["id"]]
    if "error" in item:
        return CaseOutcome(case, error=ToolkitError(item["error"]))
    return CaseOutcome(case, result=kind_of(case).read(item["result"], path=None))


def main() -> int:
    from toolkit.benchmark.context import BenchContext, configure_tf_threads
    from toolkit.benchmark.timing import own_timer

    job = json.loads(sys.stdin.read())
    cases = [BenchCase.from_dict(c) for c in job["cases"]]
    ctx = BenchContext.create(job["root"], seconds=job["seconds"])
    if job.get("tf_threads"):
        ctx.keras_threads = configure_tf_threads(job["tf_threads"])
    for spec, ref in (job.get("references") or {}).items():
        ctx.references[spec] = None if ref is None else np.asarray(ref)
        flip = ", averaged with its mirror's output (flip TTA)" if spec.endswith("+flip") else ""
        ctx.reference_source[spec] = "Keras model.keras (computed by the parent process)" + flip
    for case in cases:
        try:
            result = kind_of(case).run(case, ctx, timer=own_timer, cases=cases)
            item = {"id": case.id, "result": result.to_dict()}
        except Exception as exc:  # reported per case, like pytest would
            item = {"id": case.id, "error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"}
        print(json.dumps(item, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
