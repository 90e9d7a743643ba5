"""The load-test record: one typed, versioned file per `toolkit loadtest` run under
ARTIFACTS/bench/, in the bench envelope (toolkit.core.records), with one writer (`write_result`)
and one reader (`load_results`, which selects files by their kind; `read_result` reads one file).

Files carry "kind": "loadtest" and "schema_version" (a missing version is 1, a newer one is
refused with exit 4); every other reader under ARTIFACTS/bench/ skips the kind. The report reads
these files as served rows (shown, never on a front or picked), which is why the record lives
here, below the report. The empty "results" list is kept for readers of version-1 benchmark
files written before kinds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from toolkit.core import records
from toolkit.core.errors import ArtifactError

KIND = "loadtest"
SCHEMA_VERSION = 1
SOURCE = "cli"
WHAT = "load-test result"


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


def write_result(result: LoadtestResult, root: Path | None = None) -> Path:
    """ARTIFACTS/bench/<time>-loadtest-cli-<pid>.json (the bench envelope), written atomically."""
    result.written_at = records.now()
    body = {k: v for k, v in result.to_dict().items() if k not in records.ENVELOPE}
    path = records.write_bench_file(root, kind=KIND, schema_version=SCHEMA_VERSION, source=SOURCE, body=body,
                                    machine=result.machine, written_at=result.written_at)
    result.file = str(path)
    return path


def _from_file(file: records.BenchFile) -> LoadtestResult:
    fix = "Delete it and rerun `toolkit loadtest`."
    try:
        envelope = {"kind": file.kind, "schema_version": file.schema_version,
                    "written_at": file.written_at or "", "machine": file.machine}
        return LoadtestResult.from_dict({**file.body, **envelope}, str(file.path))
    except TypeError as exc:
        raise ArtifactError(f"{file.path}: load-test result is missing fields ({exc}). {fix}") from None


def read_result(path: str | Path) -> LoadtestResult:
    """One load-test file (a file of another kind is refused, naming its kind)."""
    path = Path(path)
    fix = "Delete it and rerun `toolkit loadtest`."
    doc = records.load(path, what=WHAT, reader_version=SCHEMA_VERSION, fix=fix)
    if records.kind_of(doc) != KIND:
        raise ArtifactError(f"{path}: not a load-test result (kind {doc.get('kind')!r}, expected "
                            f"{KIND!r}). {fix}")
    envelope = {k: doc[k] for k in ("source", "written_at", "machine", "versions") if k in doc}
    file = records.BenchFile(kind=KIND, schema_version=doc.get(records.VERSION_KEY, 1),
                             source=envelope.get("source", "unknown"), written_at=envelope.get("written_at"),
                             machine=envelope.get("machine") or {}, versions=envelope.get("versions") or {},
                             body={k: v for k, v in doc.items() if k not in records.ENVELOPE}, path=path)
    return _from_file(file)


def load_results(root: Path | None = None,
                 skipped: list[records.SkippedFile] | None = None) -> list[LoadtestResult]:
    """Every load-test result under ARTIFACTS/bench/, oldest first, selected by kind (bad files:
    see toolkit.core.records.read_bench_files)."""
    out = []
    files = records.read_bench_files(root, KIND, reader_version=SCHEMA_VERSION, what=WHAT, skipped=skipped)
    for file in files:
        try:
            out.append(_from_file(file))
        except ArtifactError as exc:
            records.skip_or_raise(skipped, file.path, exc)
    return out
