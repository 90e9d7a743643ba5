"""TFLite Micro: the tflm runtime and its parity rows, the measured arena, the C source export
(compiled with g++), and the microcontroller budgets (boards, report, list --fits).

TFLM's interpreter comes from the `mcu` extra (tflite-micro, Linux x86-64 wheels only); where it
is missing, the tests that run it skip and say so, and the refusal is tested instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app

runner = CliRunner()
SPEC = "DNN_2L_Dropout_Exp2"  # the fastest trained spec: TFLM runs its 10,000 test images in seconds
HAS_TFLM = importlib.util.find_spec("tflite_micro") is not None
needs_tflm = pytest.mark.skipif(
    not HAS_TFLM, reason="tflite-micro is not installed (pip install -e '.[mcu]'; Linux x86-64 wheels only)")
GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not installed (`make test` installs Debian's g++ "
                                                   "as root; elsewhere: apt-get install g++)")
BLOCK_TFLM = "import sys; sys.modules['tflite_micro'] = None; "  # as if tflite-micro were not installed


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def run_cli_without_tflm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = (BLOCK_TFLM + "from toolkit.cli.app import main; sys.argv = ['toolkit', *sys.argv[1:]]; main()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=900)


@pytest.fixture(scope="module")
def micro(trained_root, tmp_path_factory):
    """SPEC's full-integer, float and dynamic-range TFLite files with parity, then the C source on
    its own (which brings its unchanged source along, skipped)."""
    root = tmp_path_factory.mktemp("tflm") / "artifacts"
    shutil.copytree(trained_root / SPEC, root / SPEC, ignore=shutil.ignore_patterns("runs"))
    first = invoke("export", "--exp", SPEC, "--format", "tflite", "--precision", "fp32,dynamic,int8,int8io",
                   "--artifacts", root)
    second = invoke("export", "--exp", SPEC, "--format", "c", "--artifacts", root)
    return root, first, second


def entries(root: Path) -> dict:
    doc = json.loads((root / SPEC / "exports.json").read_text())
    return {e["key"]: e for e in doc["exports"]}


# ---------------------------------------------------------------- parity rows under TFLM


@needs_tflm
def test_full_integer_files_get_a_tflm_row_on_all_test_images(micro):
    from toolkit.core.machine import cpu_count

    root, first, _ = micro
    assert first.exit_code in (0, 5), first.output  # 5: the 1-epoch model's int8 agreement may fall short
    found = entries(root)
    for key in ("tflite-int8", "tflite-int8io"):
        row = found[key]["rows"][f"{key}@tflm"]
        assert row["runtime"] == "tflm" and row["images"] == 10_000 and row["sha256"] == found[key]["sha256"]
        low, high = row["accuracy_ci"]
        assert row["mcnemar_p"] is not None and low <= row["test_accuracy"] <= high
        # The same integer arithmetic as LiteRT's on the same file: top-1 differs on a handful at most.
        assert 0 <= row["differing_from_primary"] <= 30, row
        assert row["host_ms_per_image"] > 0 and row["workers"] == min(cpu_count(), 10_000)
        assert f"{key}@tflm" in first.output
    assert not any(k.endswith("@tflm") for e in found.values() for k in e.get("rows", {})
                   if not e["key"].startswith("tflite-int8"))  # float files have no TFLM row
    parity = json.loads((root / SPEC / "parity.json").read_text())
    tflm_rows = {r["row"]: r for r in parity["exports"] if r["runtime"] == "tflm"}
    assert set(tflm_rows) == {"tflite-int8@tflm", "tflite-int8io@tflm"}
    for row in tflm_rows.values():
        assert row["primary_row"] == row["key"]
        assert len(row["differing_indices"]) == row["differing_from_primary"]
        saved = np.load(root / SPEC / row["predictions"]["file"])
        assert saved.shape == (10_000,)


@needs_tflm
def test_parity_with_format_c_rechecks_the_source_file(micro):
    from toolkit.export.parity_rows import check_spec
    from toolkit.export.registry import parity_keys

    root, _, _ = micro
    outcome = check_spec(SPEC, root=root, keys=parity_keys(["c"]))
    assert {r.name for r in outcome.results} == {"tflite-int8io", "tflite-int8io@tflm"}
    assert not outcome.not_checked


@needs_tflm
def test_arena_is_measured_and_its_minimum_is_the_smallest_that_works(micro, dataset):
    from toolkit.core.data import to_model_input
    from toolkit.runtimes import tflm

    root, _, _ = micro
    entry = entries(root)["tflite-int8io"]
    arena = entry["arena"]
    assert arena["sha256"] == entry["sha256"] and arena["reported"] > 0
    assert arena["recommended"] == tflm.align16(arena["minimum"]) + tflm.align16(arena["scratch"])
    # The estimate stays beside it, and is within 10% of what TFLM needs.
    assert abs(entry["arena_bytes"] - arena["minimum"]) <= 0.10 * arena["minimum"]
    path = root / SPEC / entry["path"]
    images = to_model_input(dataset.x_test[:tflm.CHECK_IMAGES])
    model = tflm.TflmModel(path, device="cpu", threads=None)
    expected = model.run_encoded(model.encode(images))
    with tflm._Prober(path, model.encode(images), expected) as prober:
        assert prober.works(arena["minimum"]) and not prober.works(arena["minimum"] - 16)
    with pytest.raises(tflm.ArtifactError, match="too small"):
        tflm.interpreter(path.read_bytes(), 512, path=path)


@needs_tflm
def test_predict_runs_on_tflm_and_agrees_with_litert(micro, dataset, tmp_path):
    from conftest import png

    root, _, _ = micro
    images = []
    for i in range(4):
        images.append(tmp_path / f"test{i}.png")
        images[-1].write_bytes(png(dataset.x_test[i]))
    model = root / SPEC / "export" / "model.int8io.tflite"
    answers = {}
    for runtime in ("tflm", "litert"):
        result = invoke("predict", model, *images, "--runtime", runtime, "--json")
        assert result.exit_code == 0, result.output
        answers[runtime] = [r["class"] for r in json.loads(result.output)]
    assert answers["tflm"] == answers["litert"]


@needs_tflm
@pytest.mark.parametrize("precision", ["fp32", "dynamic"])
def test_tflm_refuses_float_and_dynamic_range_files(micro, dataset, tmp_path, precision):
    from conftest import png

    root, _, _ = micro
    image = tmp_path / "one.png"
    image.write_bytes(png(dataset.x_test[0]))
    model = root / SPEC / "export" / f"model.{precision}.tflite"
    result = invoke("predict", model, image, "--runtime", "tflm")
    assert result.exit_code == 2, result.output
    assert str(model) in result.output and "int8io" in result.output and "Traceback" not in result.output


def test_bench_refuses_timing_tflm():
    result = invoke("bench", "--runtime", "tflm", "--artifacts", "/nonexistent")
    assert result.exit_code == 2 and "host" in result.output, result.output


# ---------------------------------------------------------------- without tflite-micro


def test_missing_tflite_micro_is_one_line_and_exit_6(micro, tmp_path):
    root, _, _ = micro
    model = root / SPEC / "export" / "model.int8io.tflite"
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "x.png")  # images are read before the model loads
    done = run_cli_without_tflm("predict", model, "x.png", "--runtime", "tflm", cwd=tmp_path)
    assert done.returncode == 6, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "tflite-micro" in lines[0] and "pip install" in lines[0], done.stderr


def test_without_tflite_micro_parity_skips_the_rows_and_the_header_uses_the_estimate(micro, tmp_path):
    source, _, _ = micro
    root = tmp_path / "artifacts"
    shutil.copytree(source / SPEC, root / SPEC)
    done = run_cli_without_tflm("export", "--exp", SPEC, "--format", "tflite,c", "--precision", "int8io",
                                "--force", "--artifacts", root, cwd=tmp_path)
    assert done.returncode in (0, 5), done.stdout + done.stderr
    assert "tflite-int8io@tflm skipped: tflm is not installed here" in " ".join(done.stdout.split())
    entry = entries(root)["tflite-int8io"]
    assert "tflite-int8io@tflm" not in entry.get("rows", {}) and "arena" not in entry
    header = (root / SPEC / "export" / "tflm" / "model_data.h").read_text()
    assert "the toolkit's estimate" in header
    assert entries(root)["tflm-c"]["settings"]["arena"] == "estimate"


# ---------------------------------------------------------------- the C source


def c_files(root: Path) -> dict[str, Path]:
    folder = root / SPEC / "export" / "tflm"
    return {name: folder / name for name in ("model_data.h", "model_data.cc", "model_ops.h")}


def test_c_source_is_recorded_with_every_file_and_its_sha256(micro):
    root, _, second = micro
    assert second.exit_code in (0, 5), second.output
    assert "unchanged, skipped" in second.output and "tflite-int8io" in second.output  # its source: current
    found = entries(root)
    entry = found["tflm-c"]
    assert entry["settings"]["source"] == {"key": "tflite-int8io", "sha256": found["tflite-int8io"]["sha256"]}
    for record in entry["files"]:
        path = root / SPEC / record["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    header = c_files(root)["model_data.h"].read_text()
    size = int(header.split("kTensorArenaSize = ")[1].split(";")[0])
    assert size == entry["tensor_arena_size"]
    if HAS_TFLM:  # the measured minimum, rounded up to 16, plus the stated margin
        assert size == found["tflite-int8io"]["arena"]["recommended"] and size % 16 == 0
    assert "kInputScale" in header and "kOutputZeroPoint" in header and "kClassNames" in header


def test_c_source_lists_exactly_the_operators_of_the_flatbuffer(micro):
    from toolkit.export.tflm_c import registered_operators, resolver_method
    from toolkit.runtimes import tflite_info

    root, _, _ = micro
    ops = c_files(root)["model_ops.h"].read_text()
    flatbuffer = tflite_info.read(root / SPEC / "export" / "model.int8io.tflite").operator_names
    assert registered_operators(ops) == list(flatbuffer)
    assert f"kNumOps = {len(flatbuffer)}" in ops
    # Every builtin TFLM's resolver adds, as its header names the method (tests/data, read from TFLM).
    known = json.loads((Path(__file__).parent / "data" / "tflm-resolver-methods.json").read_text())
    assert {op: resolver_method(op) for op in known["methods"]} == known["methods"]


@needs_gxx
def test_c_source_compiles_and_round_trips_byte_identical(micro, tmp_path):
    root, _, _ = micro
    files = c_files(root)
    compiled = subprocess.run([GXX, "-std=c++17", "-Wall", "-Werror", "-c", str(files["model_data.cc"]),
                               "-o", str(tmp_path / "model_data.o")], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    program = tmp_path / "dump.cc"
    program.write_text(r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
int main(int argc, char** argv) {
  std::FILE* out = std::fopen(argv[1], "wb");
  std::fwrite(fashion_mnist::kModelData, 1, fashion_mnist::kModelDataLen, out);
  std::fclose(out);
  std::printf("%zu %d %s\n", fashion_mnist::kTensorArenaSize,
              static_cast<int>(reinterpret_cast<std::uintptr_t>(fashion_mnist::kModelData) % 16),
              fashion_mnist::kClassNames[9]);
  return 0;
}
""")
    binary = tmp_path / "dump"
    built = subprocess.run([GXX, "-std=c++17", "-Wall", "-Werror", f"-I{files['model_data.h'].parent}",
                            str(program), str(files["model_data.cc"]), "-o", str(binary)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(binary), str(tmp_path / "model.tflite")], capture_output=True, text=True,
                         check=True)
    arena, alignment, last_class = ran.stdout.strip().split(maxsplit=2)
    tflite = root / SPEC / "export" / "model.int8io.tflite"
    assert hashlib.sha256((tmp_path / "model.tflite").read_bytes()).hexdigest() == \
        hashlib.sha256(tflite.read_bytes()).hexdigest()
    assert alignment == "0" and last_class == "Ankle boot"
    assert int(arena) == entries(root)["tflm-c"]["tensor_arena_size"]


TFLM_INCLUDE = [p for p in os.environ.get("TFLM_INCLUDE", "").split(os.pathsep) if p]


@needs_gxx
@pytest.mark.skipif(not TFLM_INCLUDE, reason=(
    "TFLM's headers are not here (the tflite-micro wheel ships none): set TFLM_INCLUDE to a tflite-micro "
    "checkout and the include folders of its flatbuffers and gemmlowp downloads"))
@pytest.mark.parametrize("unit", ["resolver", "docs/snippets/classify_tflm.cc"])
def test_resolver_file_and_the_docs_snippet_compile_against_tflm_headers(micro, tmp_path, unit):
    root, _, _ = micro
    files = c_files(root)
    source = Path(__file__).parent.parent / unit
    if unit == "resolver":
        source = tmp_path / "resolver.cc"
        source.write_text('#include "model_ops.h"\nnamespace { fashion_mnist::OpResolver resolver; }\n'
                          "int Register() { return fashion_mnist::RegisterOps(resolver); }\n")
    includes = [f"-I{p}" for p in (files["model_ops.h"].parent, *TFLM_INCLUDE)]
    compiled = subprocess.run([GXX, "-std=c++17", "-Wall", "-fsyntax-only", "-DTF_LITE_STATIC_MEMORY",
                               *includes, str(source)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr[-3000:]


# ---------------------------------------------------------------- boards and budgets


def test_boards_are_data_with_sources_and_an_unknown_board_is_one_line():
    from toolkit.core.boards import BOARDS, McuBudget, get_board, smallest_fitting

    for board in BOARDS.values():
        assert board.source and board.flash_budget_bytes > 0 and board.ram_budget_bytes > 0
    result = invoke("report", "--board", "arduino-uno")
    assert result.exit_code == 2 and "unknown board 'arduino-uno'" in result.output
    assert "nrf52840-dk" in result.output
    budget = McuBudget.of("nrf52840-dk", None, 100)  # --max-ram-kib narrows the board's RAM
    assert budget.max_ram_bytes == 100 * 1024
    assert budget.max_flash_bytes == get_board("nrf52840-dk").flash_budget_bytes
    assert budget.why_not(10_000, 200 * 1024) == ["arena 200.0 KiB > 100 KiB RAM"]
    assert smallest_fitting(10_000, 10_000).name == "nrf52840-dk"
    assert smallest_fitting(10_000, 300 * 1024).name == "esp32-s3-devkitc-1"
    assert smallest_fitting(10 * 2**20, 1000) is None


def test_list_fits_filters_specs_by_their_parameters():
    from toolkit.core.boards import estimated_int8_bytes, get_board
    from toolkit.specs import SPECS

    result = invoke("list", "--fits", "nrf52840-dk", "--json")
    assert result.exit_code == 0, result.output
    listed = {s["name"] for s in json.loads(result.output)}
    budget = get_board("nrf52840-dk").flash_budget_bytes
    assert listed == {n for n, s in SPECS.items() if estimated_int8_bytes(s.param_count()) <= budget}
    assert "embedded" in listed and "CNN_1L_Dropout_Exp6" not in listed


def test_list_json_shows_the_measured_arena_of_trained_specs(micro):
    root, _, _ = micro
    result = invoke("list", "--json", "--artifacts", root)
    specs = {s["name"]: s for s in json.loads(result.output)}
    files = {f["file"]: f for f in specs[SPEC]["microcontroller"]}
    assert set(files) == {"tflite-int8", "tflite-int8io"}
    arena = files["tflite-int8io"]["arena_bytes"]
    if HAS_TFLM:
        assert arena["source"] == "measured by TFLM" and arena["recommended"] >= arena["minimum"] > 0
    else:
        assert arena["source"].startswith("estimate")
    assert "microcontroller" not in specs["embedded"]  # not trained here


@needs_tflm
def test_report_under_a_board_says_which_rows_fit_and_picks_one(micro, tmp_path):
    from toolkit.core.boards import McuBudget
    from toolkit.report.judge import Judge
    from toolkit.report.mcu import build_section, mcu_rows

    root, _, _ = micro
    notes: list[str] = []
    rows = mcu_rows(root, [SPEC], notes)
    assert [r.key for r in rows] == ["tflite-int8", "tflite-int8io"]
    assert all(r.arena_measured for r in rows)
    for r in rows:  # whatever parity said of this 1-epoch model, pass the rows to test the rule
        r.parity = "pass"
    judge = Judge(labels=None, spreads={})
    section = build_section(rows, McuBudget.of("nrf52840-dk", None, None), judge)
    assert section.pick is not None and "nRF52840 DK" in section.pick_text
    # Equal MFLOPs: the smaller file (int8io) wins the tie.
    assert section.pick.key == "tflite-int8io"
    tight = build_section(rows, McuBudget.of(None, 1, None), judge)
    assert tight.pick is None and all(r.why_not and "flash" in r.why_not[0] for r in rows)
