"""Nothing valid lost, and the real cause named: failed re-exports, unreadable bench files, stale
rows, full disks and read-only folders, paths in records, misleading advice, litter after a kill
(issue 24's record and pipeline items; the server's are in test_serve.py and test_loadtest.py).

The disk tests use a private mount namespace (`unshare -m`) for a read-only bind mount or a tiny
tmpfs, so they touch nothing outside their own folder; where that is not permitted they skip
and say so.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_spec, fingerprint
from test_benchmark import BENCH_SPEC, make_benched_root
from typer.testing import CliRunner

from toolkit.cli.app import app

runner = CliRunner()
SPEC = BENCH_SPEC  # DNN_2L_Dropout_Exp2, 1 epoch on 3,000 images


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def entries(root: Path, spec: str = SPEC) -> dict:
    return {e["key"]: e for e in json.loads((root / spec / "exports.json").read_text())["exports"]}


@pytest.fixture(scope="module")
def benched(tmp_path_factory, trained_root) -> Path:
    root, _ = make_benched_root(tmp_path_factory, trained_root)
    return root


@pytest.fixture()
def reported(benched, tmp_path) -> Path:
    """A private copy of the benchmarked root with its report written."""
    root = tmp_path / "root"
    shutil.copytree(benched, root)
    result = invoke("report", "--artifacts", root)
    assert result.exit_code == 0, result.output
    return root


def namespace_allowed() -> str | None:
    """Why a private mount namespace cannot be used here (None: it can)."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        return "needs root and unshare(1) for a private mount namespace"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"mounts are not permitted here ({probe.stderr.strip()})"


def in_namespace(script: str, *args: str) -> subprocess.CompletedProcess:
    why = namespace_allowed()
    if why:
        pytest.skip(why)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHON": sys.executable}
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-ec", script, "sh", *args],
                          capture_output=True, text=True, env=env, timeout=900)


TOOLKIT = '"$PYTHON" -c "from toolkit.cli.app import main; import sys; sys.argv[0] = \'toolkit\'; main()"'


# ---------------------------------------------------------------- 1: a failed re-export keeps what was valid


def test_a_failed_forced_re_export_keeps_the_previous_file_and_record(benched, tmp_path, monkeypatch):
    import toolkit.export.onnx

    root = tmp_path / "root"
    shutil.copytree(benched, root)
    before = entries(root)["onnx-fp32"]
    files = fingerprint(root / SPEC / "export")

    def converter_fails(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(toolkit.export.onnx, "convert", converter_fails)
    result = invoke("export", "--exp", SPEC, "--format", "onnx", "--precision", "fp32", "--force",
                    "--artifacts", root)
    assert result.exit_code == 7, result.output
    text = " ".join(result.output.split())
    assert "export failed for DNN_2L_Dropout_Exp2/onnx-fp32: RuntimeError: converter exploded" in text
    assert "previous file and its record are kept" in text
    assert entries(root)["onnx-fp32"] == before  # still exported, same sha256, parity still passed
    assert fingerprint(root / SPEC / "export") == files
    assert not list((root / SPEC / "export").glob(".staging-*"))


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_a_read_only_or_full_export_folder_is_named_and_nothing_valid_is_lost(benched, tmp_path, disk):
    root = tmp_path / "root"
    shutil.copytree(benched, root)
    before = fingerprint(root, ignore=(".lock",))
    export = root / SPEC / "export"
    if disk == "read-only":
        setup = f'mount --bind "{export}" "{export}"; mount -o remount,bind,ro "{export}" "{export}"'
    else:  # a tmpfs holding the files and room for little else: a new ONNX file does not fit
        size = sum(p.stat().st_size for p in export.rglob("*") if p.is_file()) + 64 * 1024
        setup = (f'cp -a "{export}" "{tmp_path}/saved"; mount -t tmpfs -o size={size} tmpfs "{export}"; '
                 f'cp -a "{tmp_path}/saved/." "{export}/"')
    done = in_namespace(f'{setup}; {TOOLKIT} export --exp {SPEC} --format onnx --precision fp32,dynamic '
                        f'--force --artifacts "{root}"')
    assert done.returncode == 7, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    expected = "Read-only file system" if disk == "read-only" else "the disk is full"
    assert "cannot write there" in said and expected in said and "converter" not in said, said
    assert fingerprint(root, ignore=(".lock",)) == before  # records and files exactly as they were


# ---------------------------------------------------------------- 6, 7, 11: the report and bad side files


def test_unreadable_bench_files_are_named_with_the_command_that_rewrites_them(reported):
    bench = reported / "bench"
    (bench / "20990101T000000-loadtest-cli-1.json").write_text('{"schema_version": 1, "kind": "loadt')
    inference = sorted(bench.glob("*-inference-*.json"))[-1]
    newer = json.loads(inference.read_text()) | {"schema_version": 99}
    (bench / "20990101T000001-inference-cli-2.json").write_text(json.dumps(newer))
    (bench / "20990101T000002-mystery-cli-3.json").write_text(json.dumps({"kind": "nosuch"}))
    (bench / "20990101T000003-inference-cli-4.json").write_text(json.dumps({"kind": 5, "results": []}))
    result = invoke("report", "--artifacts", reported)
    assert result.exit_code == 7, result.output
    assert "4 bench file(s) that could not be read" in " ".join(result.output.split())
    notes = (reported / "report.md").read_text()
    assert "20990101T000000-loadtest-cli-1.json" in notes and "rerun `toolkit loadtest`" in notes
    assert "schema_version 99" in notes and "Upgrade this one" in notes
    assert "'nosuch'" in notes and "no toolkit command writes it" in notes
    assert "its 'kind' is 5" in notes
    assert "onnx-fp32" in notes.split("## ")[0]  # the readable files' rows are still in the table


def test_rows_left_out_for_a_replaced_file_are_named(reported):
    run = sorted((reported / "bench").glob("*-inference-*.json"))[-1]
    doc = json.loads(run.read_text())
    for r in doc["results"]:
        if r["key"] == "onnx-dynamic":
            r["sha256"] = "0" * 64  # measured a file that has since been replaced
    run.write_text(json.dumps(doc))
    result = invoke("report", "--artifacts", reported)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (f"{SPEC} onnx-dynamic on onnxruntime: left out, its benchmark results measured a file since "
            f"replaced") in said and f"toolkit bench --exp {SPEC} --format onnx-dynamic" in said


def test_a_newer_parity_record_says_upgrade_not_bench(reported):
    parity = reported / SPEC / "parity.json"
    parity.write_text(json.dumps(json.loads(parity.read_text()) | {"schema_version": 99}))
    result = invoke("report", "--artifacts", reported)
    assert result.exit_code == 4, result.output
    said = " ".join(result.output.split())
    assert "newer toolkit" in said and "toolkit bench" not in said


def test_a_record_without_sha256_is_named_as_such(reported):
    exports = reported / SPEC / "exports.json"
    doc = json.loads(exports.read_text())
    for e in doc["exports"]:
        if e["key"] == "onnx-fp32":
            e["sha256"] = None
    exports.write_text(json.dumps(doc))
    result = invoke("parity", "--exp", SPEC, "--format", "onnx-fp32", "--artifacts", reported)
    assert result.exit_code == 5, result.output
    assert "records no sha256" in " ".join(result.output.split())


def test_a_report_that_fails_mid_way_leaves_the_previous_set(reported, monkeypatch):
    import toolkit.report.build

    names = ("report.md", "report.csv", "pick.json", "report_accuracy_vs_latency.png")
    before = {n: (reported / n).read_bytes() for n in names if (reported / n).is_file()}

    def killed(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(reported / "report.md"))

    monkeypatch.setattr(toolkit.report.build, "to_markdown", killed)  # after the plots were written
    result = invoke("report", "--artifacts", reported)
    assert result.exit_code == 4, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "the disk is full" in lines[0] and str(reported) in result.output
    assert {n: (reported / n).read_bytes() for n in before} == before
    assert not list(reported.glob(".report-staging-*"))


# ---------------------------------------------------------------- 10: paths in records stay inside


@pytest.mark.parametrize("field,value", [("path", "../../elsewhere/outside.onnx"), ("path", "/etc/passwd"),
                                         ("key", "../onnx-fp32")])
def test_paths_in_records_are_confined_to_the_spec_folder(reported, field, value):
    outside = reported.parent / "elsewhere" / "outside.onnx"
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(reported / SPEC / "export" / "model.fp32.onnx", outside)
    exports = reported / SPEC / "exports.json"
    doc = json.loads(exports.read_text())
    doc["exports"][0][field] = value
    exports.write_text(json.dumps(doc))
    for args in (["parity", "--exp", SPEC], ["report"]):
        result = invoke(*args, "--artifacts", reported)
        said = " ".join(result.output.split())
        assert result.exit_code == 4, (args, result.output)
        assert "exports.json" in said and repr(value) in said and "Traceback" not in said, said
    from toolkit.core.errors import ArtifactError
    from toolkit.serve.loading import choose_export

    with pytest.raises(ArtifactError, match="outside|not a name"):
        choose_export(SPEC, reported)


# ---------------------------------------------------------------- 11: serve's exit code for a replaced file


def test_serve_refuses_a_replaced_file_with_exit_4(tmp_path, trained_root):
    root = copy_spec(trained_root, tmp_path, SPEC)
    assert invoke("export", "--exp", SPEC, "--format", "onnx", "--artifacts", root).exit_code == 0
    model = root / SPEC / "export" / "model.fp32.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # replaced after parity checked it
    from toolkit.core.errors import ArtifactError, ParityError
    from toolkit.serve.loading import choose_export

    with pytest.raises(ArtifactError) as info:
        choose_export(SPEC, root)
    assert not isinstance(info.value, ParityError) and info.value.exit_code == 4
    assert "stale" in info.value.message


def test_a_damaged_embedding_model_names_the_command_that_writes_it(tmp_path):
    from toolkit.core.errors import ArtifactError
    from toolkit.recommend.embedding import OnnxEmbedder

    damaged = tmp_path / "embedding.onnx"
    damaged.write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError) as info:
        OnnxEmbedder(damaged)
    assert "toolkit recommend" in info.value.message and "toolkit export" not in info.value.message


# ---------------------------------------------------------------- 13: a value given twice


def test_a_recipe_field_given_twice_is_refused():
    result = invoke("train", "--exp", "fast", "--epochs", "1", "--recipe", "epochs=0", "--limit-train", "300")
    assert result.exit_code == 2 and "given twice" in result.output
    result = invoke("train", "--exp", "fast", "--recipe", "epochs=0", "--limit-train", "300")
    assert result.exit_code == 2 and "epochs must be a positive integer" in result.output
