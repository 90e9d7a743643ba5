"""The records that cross stages (exports.json, parity.json, artifacts/bench/*.json): each reader
refuses a newer schema and a missing field with one line naming the file, skips bench kinds it
does not own, and reads the records the toolkit wrote before versions existed (a real Exp6 run,
kept verbatim under tests/data/legacy-exp6/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toolkit.benchmark.inference_results import read_runs
from toolkit.core import artifacts
from toolkit.core.errors import ArtifactError
from toolkit.export.parity_record import read_parity
from toolkit.export.record import read_exports

LEGACY = Path(__file__).parent / "data" / "legacy-exp6"
SPEC = "CNN_1L_Dropout_Exp6"


@pytest.fixture
def legacy_root(tmp_path) -> Path:
    """The pre-change records of a real 20-epoch Exp6 run (exports, parity, one bench file)."""
    root = tmp_path / "artifacts"
    (root / SPEC).mkdir(parents=True)
    (root / "bench").mkdir()
    for name in ("exports.json", "parity.json", "metrics.json"):
        shutil.copy(LEGACY / name, root / SPEC / name)
    for path in LEGACY.glob("bench-*.json"):
        shutil.copy(path, root / "bench" / path.name.removeprefix("bench-"))
    return root


def _rewrite(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _arts(root: Path) -> artifacts.SpecArtifacts:
    return artifacts.spec_artifacts(SPEC, root)


# record -> (its file under a root, its reader)
READERS = {
    "exports": (lambda root: root / SPEC / "exports.json", lambda root: read_exports(_arts(root))),
    "parity": (lambda root: root / SPEC / "parity.json", lambda root: read_parity(_arts(root))),
    "bench": (lambda root: next((root / "bench").glob("*.json")), read_runs),
}


def test_legacy_records_are_read(legacy_root):
    """No schema_version, no kind, no parity sha256: version 1, read as it is."""
    arts = artifacts.spec_artifacts(SPEC, legacy_root)
    exports = read_exports(arts)
    assert {e.key for e in exports.exports} == {f"{f}-{p}" for f in ("onnx", "tflite")
                                                for p in ("fp32", "fp16", "int8", "dynamic")}
    for entry in exports.exports:
        assert entry.exported and entry.sha256 and entry.parity.status in ("pass", "fail")
        assert entry.parity.sha256 is None  # version 1 did not name the checked file...
        # ...so parity counts for the file the entry names, and for no other.
        assert entry.parity_state(entry.sha256) == entry.parity.status
        assert entry.parity_state("0" * 64) == "stale"
        assert entry.facts  # what the exporter reported is kept, not dropped
    parity = read_parity(arts)
    assert parity.test_images == 10_000 and len(parity.results) == 8
    assert all(r.sha256 is None and r.status in ("pass", "fail") for r in parity.results)
    (run,) = read_runs(legacy_root)
    assert run.results and all(r.case.kind == "inference" and r.stats is not None for r in run.results)
    assert run.peaks["fp32"] and run.source in ("cli", "pytest")


@pytest.mark.parametrize("record", READERS)
def test_a_newer_schema_is_refused_naming_the_file(legacy_root, record):
    where, read = READERS[record]
    path = where(legacy_root)
    _rewrite(path, lambda doc: doc.update(schema_version=99))
    with pytest.raises(ArtifactError) as err:
        read(legacy_root)
    assert err.value.exit_code == 4
    assert str(path) in err.value.message and "schema_version 99" in err.value.message
    assert "Upgrade this one" in err.value.message


@pytest.mark.parametrize("record, drop", [
    ("exports", lambda doc: doc["exports"][0].pop("status")),
    ("exports", lambda doc: doc["exports"][2]["parity"].pop("status")),
    ("exports", lambda doc: doc.pop("exports")),
    ("parity", lambda doc: doc["exports"][1].pop("key")),
    ("bench", lambda doc: doc["results"][0].pop("batch")),
    ("bench", lambda doc: doc["results"][0].pop("p50_ms")),
    ("bench", lambda doc: doc.pop("results")),
])
def test_a_missing_field_is_named(legacy_root, record, drop):
    where, read = READERS[record]
    path = where(legacy_root)
    before = json.loads(path.read_text())
    _rewrite(path, drop)
    after = json.loads(path.read_text())
    with pytest.raises(ArtifactError) as err:
        read(legacy_root)
    missing = _missing_field(before, after)
    assert str(path) in err.value.message and f"no {missing!r} field" in err.value.message


def _missing_field(before, after) -> str:
    """The one key present in `before` and absent from `after`, however deep."""
    if isinstance(before, dict):
        gone = set(before) - set(after)
        if gone:
            return gone.pop()
        return next(_missing_field(before[k], after[k]) for k in before if before[k] != after[k])
    return next(_missing_field(b, a) for b, a in zip(before, after, strict=True) if b != a)


def test_bench_readers_skip_kinds_they_do_not_own(legacy_root):
    bench = legacy_root / "bench"
    (bench / "20990101T000000-training-1.json").write_text(json.dumps(
        {"schema_version": 7, "kind": "training", "runs": [{"spec": SPEC, "seconds_per_epoch": 21.0}]}))
    (bench / "20990101T000000-loadtest-2.json").write_text(json.dumps({"kind": "loadtest"}))
    runs = read_runs(legacy_root)
    assert len(runs) == 1 and runs[0].path.name != "20990101T000000-training-1.json"


def test_written_records_carry_version_and_kind(legacy_root):
    from toolkit.benchmark.inference_results import BenchRun, write_run
    from toolkit.export.record import write_exports

    arts = artifacts.spec_artifacts(SPEC, legacy_root)
    write_exports(arts, read_exports(arts))
    doc = json.loads(arts.exports_json.read_text())
    assert doc["schema_version"] == 3
    legacy = json.loads((LEGACY / "exports.json").read_text())
    # Same entries and fields as before (parity summaries now also name the checked file).
    for old, new in zip(legacy["exports"], doc["exports"], strict=True):
        new_parity, old_parity = new.pop("parity"), old.pop("parity")
        assert {k: new_parity[k] for k in old_parity} == old_parity and new == old
    (run,) = read_runs(legacy_root)
    path = write_run(legacy_root, BenchRun(source="cli", results=run.results, peaks=run.peaks))
    written = json.loads(path.read_text())
    assert written["schema_version"] == 2 and written["kind"] == "inference"
    assert [r.to_dict() for r in read_runs(legacy_root)[-1].results] == [r.to_dict() for r in run.results]


def test_memory_files_are_their_own_kind(legacy_root):
    """A memory results file is read by its owner only; a newer schema is refused naming the file;
    a legacy inference file groups into cases of one measurement (no interval)."""
    from toolkit.benchmark.memory import read_memory_runs
    from toolkit.core.errors import NewerRecordError

    (run,) = read_runs(legacy_root)
    groups = run.groups
    assert len(groups) == len(run.results)
    assert all(g.processes == 1 and g.p50_interval is None for g in groups)
    case = run.results[0].case.to_dict() | {"kind": "memory"}
    entry = case | {"id": "x", "peaks_mb": {"python_numpy": 38.0, "serving_b1": None},
                    "ms": {"load": 12.5}, "unavailable": "no VmHWM here"}
    path = legacy_root / "bench" / "20990101T000000-cli-3-memory.json"
    path.write_text(json.dumps({"schema_version": 1, "kind": "memory", "results": [entry]}))
    assert len(read_runs(legacy_root)) == 1  # the inference reader skips it
    (memory,) = read_memory_runs(legacy_root)
    (result,) = memory.results
    assert result.peaks_mb["python_numpy"] == 38.0 and result.peaks_mb["serving_b1"] is None
    assert result.ms["load"] == 12.5 and result.ms["first_call"] is None and result.unavailable
    _rewrite(path, lambda doc: doc.update(schema_version=2))
    with pytest.raises(NewerRecordError, match="memory benchmark results has schema_version 2"):
        read_memory_runs(legacy_root)
    _rewrite(path, lambda doc: (doc.update(schema_version=1), doc["results"][0].pop("peaks_mb")))
    with pytest.raises(ArtifactError, match="'peaks_mb'"):
        read_memory_runs(legacy_root)
