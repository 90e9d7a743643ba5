"""The load-test record: one typed, versioned file per `toolkit loadtest` run under
ARTIFACTS/bench/, with one writer (`write_result`) and one reader (`read_result`).

Files carry "kind": "loadtest" and "schema_version" (toolkit.records: a missing version is 1, a
newer one is refused with exit 4); every other reader under ARTIFACTS/bench/ skips the kind. The
report reads these files as served rows (toolkit.report: shown, never on a front or picked). The
empty "results" list is kept for readers of version-1 benchmark files written before kinds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit import artifacts, records
from toolkit.errors import ArtifactError

KIND = "loadtest"
SCHEMA_VERSION = 1


@dataclass
class Step:
    """One load level (server scenario) or one whole run (single-stream, offline)."""

    target_rate: float | None  # requests/s scheduled (Poisson mean); None for closed loop / offline
    seconds: float  # scheduled span (open loop) or wall time (closed loop)
    queries: int
    ok: int
    errors: dict[str, int]  # by HTTP status or client-side error ("timeout", "connect_error", ...)
    achieved_rate: float  # successful responses per second over the step
    p50_ms: float | None  # latency from each request's scheduled time; failures count as infinite
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    send_lag_p50_ms: float
    send_lag_p99_ms: float
    send_lag_max_ms: float
    valid: bool  # the client kept its schedule: send lag p99 <= 1 ms
    meets_minimum: bool  # long enough to count as a server-scenario step (>= 10 s and >= 662 queries)
    passed: bool  # valid, no failures and p99 within the bound
    verdict: str  # one line: why it passed or failed
    batch_sizes: dict[str, int] = field(default_factory=dict)  # images per runtime call -> calls (server)
    mean_batch: float | None = None
    connections: int = 0  # connections the client opened
    client_cpu_pct: float | None = None  # of one core
    server_cpu_pct: float | None = None  # of one core (the server's process_cpu_seconds_total)
    load_avg_1m: list[float] = field(default_factory=list)  # before and after the step


@dataclass
class LoadtestResult:
    scenario: str  # "server" | "single-stream" | "offline"
    endpoint: str  # "classify" | "similar" | "ceiling"
    url: str
    upload: str  # "multipart" | "raw": how each PNG was sent
    p99_bound_ms: float | None
    steps: list[Step]
    summary: dict[str, Any]  # best_rate (server), p90_ms (single-stream), throughput (offline), ...
    server: dict[str, Any]  # GET /v1/model at the start: export identity, parity, batching, limits
    machine: dict[str, Any]  # cpu, cores, what shares them
    settings: dict[str, Any]
    label: str = ""
    notes: list[str] = field(default_factory=list)
    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    written_at: str = ""
    file: str = ""  # where it was read from or written to (not stored)

    @property
    def best_rate(self) -> float | None:
        return self.summary.get("best_rate")

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("file")
        doc["results"] = []  # see the module docstring
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], file: str = "") -> LoadtestResult:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in names and k != "steps"}
        step_names = {f.name for f in fields(Step)}
        steps = [Step(**{k: v for k, v in s.items() if k in step_names}) for s in doc.get("steps", [])]
        return cls(**values, steps=steps, file=file)


def write_result(result: LoadtestResult, root: str | Path | None = None) -> Path:
    """ARTIFACTS/bench/<time>-loadtest-<endpoint>-<scenario>-<pid>.json, written atomically."""
    now = datetime.now(timezone.utc)
    result.written_at = now.isoformat(timespec="seconds")
    name = f"{now.strftime('%Y%m%dT%H%M%S')}-loadtest-{result.endpoint}-{result.scenario}-{os.getpid()}.json"
    path = artifacts.bench_dir(root) / name
    artifacts.write_json(path, result.to_dict())
    result.file = str(path)
    return path


def read_result(path: str | Path) -> LoadtestResult:
    path = Path(path)
    fix = "Delete it and rerun `toolkit loadtest`."
    doc = records.load(path, what="load-test result", reader_version=SCHEMA_VERSION, fix=fix)
    if doc.get("kind") != KIND:
        raise ArtifactError(f"{path}: not a load-test result (kind {doc.get('kind')!r}, expected "
                            f"{KIND!r}). {fix}")
    try:
        return LoadtestResult.from_dict(doc, str(path))
    except TypeError as exc:
        raise ArtifactError(f"{path}: load-test result is missing fields ({exc}). {fix}") from None


def load_results(root: str | Path | None = None) -> list[LoadtestResult]:
    """Every load-test result under ARTIFACTS/bench/, oldest first (other kinds are skipped)."""
    folder = artifacts.bench_dir(root)
    out = []
    for path in sorted(folder.glob("*-loadtest-*.json")) if folder.is_dir() else []:
        out.append(read_result(path))
    return sorted(out, key=lambda r: (r.written_at, r.file))
