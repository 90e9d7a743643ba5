"""The report's microcontroller section: every full-integer TFLite file (tflite-int8,
tflite-int8io) as TFLite Micro runs it, with what it takes of a board: the file's bytes in flash
and the tensor arena in RAM (TFLM's measured figure, or the toolkit's estimate marked `~` where
TFLM has not run), and, under a board or a flash/RAM budget, which rows fit, why the others do
not, and a pick.

Only a file whose TFLM row passed parity and whose arena TFLM measured can be picked. Among the
rows that fit, those not significantly less accurate than the most accurate one are tied with it
(the report's rule, toolkit.report.judge); the pick is the tied row with the fewest MFLOPs per
image (on a microcontroller the time follows the work; TFLM's time on this host is not a device's
latency), then the smallest file. Host time is shown as host time only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.core import artifacts, stats
from toolkit.core.boards import KIB, Board, McuBudget, smallest_fitting
from toolkit.core.errors import ArtifactError

RUNTIME = "tflm"


@dataclass
class McuRow:
    spec: str
    key: str  # the file's export key
    row: str  # its TFLM parity row, e.g. tflite-int8io@tflm
    parity: str  # that row's state: "pass" | "fail" | "not run" | "stale"
    accuracy: float | None
    keras_accuracy: float | None
    images: int | None
    flash_bytes: int  # the .tflite file (the model array of the C source)
    arena_bytes: int | None  # what a firmware reserves: measured minimum + margin, else the estimate
    arena_measured: bool
    params: int
    mflops: float
    host_ms: float | None = None  # TFLM reference kernels on this host: not a device's latency
    c_source: str | None = None  # the C export of this very file, if there is one
    predictions: np.ndarray | None = field(default=None, repr=False)
    why_not: list[str] = field(default_factory=list)  # why it does not fit the budget
    smallest_board: Board | None = None
    tied: bool = False
    number: int = 0

    @property
    def accuracy_interval(self) -> stats.Interval | None:
        if self.accuracy is None or not self.images:
            return None
        return stats.interval_of_accuracy(self.accuracy, self.images)

    @property
    def pickable(self) -> bool:
        return self.parity == "pass" and self.arena_measured and self.accuracy is not None

    @property
    def label(self) -> str:
        return f"{self.spec} {self.key} on TFLM"


@dataclass
class McuSection:
    rows: list[McuRow]
    budget: McuBudget
    pick: McuRow | None = None
    pick_text: str = ""
    notes: list[str] = field(default_factory=list)


def mcu_rows(base: Path, names: Sequence[str], notes: list[str]) -> list[McuRow]:
    """One row per full-integer file of each spec, from exports.json and parity.json."""
    from toolkit.export.registry import FORMATS

    rows = []
    for name in names:
        arts = artifacts.spec_artifacts(name, base)
        rows += [r for key, fmt in FORMATS.items() if RUNTIME in fmt.runtimes
                 if (r := _row(arts, key, notes)) is not None]
    for number, row in enumerate(rows, 1):
        row.number = number
    return rows


def _row(arts: artifacts.SpecArtifacts, key: str, notes: list[str]) -> McuRow | None:
    from toolkit.export.parity_record import read_parity
    from toolkit.export.record import read_exports
    from toolkit.export.registry import row_name
    from toolkit.specs import get_spec

    entries = read_exports(arts).by_key()
    entry = entries.get(key)
    path = arts.dir / entry.path if entry is not None else None
    if entry is None or not entry.exported or not path.is_file():
        return None
    sha = artifacts.sha256_file(path)
    row = row_name(key, RUNTIME)
    state = entry.row_state(row, sha)
    summary = entry.rows.get(row) if state in ("pass", "fail") else None
    arena = entry.measured_arena(sha)
    spec = get_spec(arts.name)
    out = McuRow(spec=arts.name, key=key, row=row, parity=state,
                 accuracy=summary.test_accuracy if summary else None,
                 keras_accuracy=summary.keras_accuracy if summary else None,
                 images=summary.images if summary else None, flash_bytes=path.stat().st_size,
                 arena_bytes=arena["recommended"] if arena else entry.arena_bytes,
                 arena_measured=arena is not None, params=spec.param_count(), mflops=spec.mflops_per_image(),
                 host_ms=summary.host_ms_per_image if summary else None,
                 c_source=_c_source(entries, key, sha))
    if summary is not None:
        out.predictions = _predictions(arts, row, sha, read_parity, notes)
    return out


def _c_source(entries: dict, key: str, sha: str) -> str | None:
    """The folder of the C export made from this very file (same sha256), if any."""
    for entry in entries.values():
        source = entry.settings.get("source") if entry.exported else None
        if source and source.get("key") == key and source.get("sha256") == sha:
            return str(Path(entry.path).parent)
    return None


def _predictions(arts, row: str, sha: str, read_parity, notes: list[str]) -> np.ndarray | None:
    try:
        record = read_parity(arts)
        result = record.row(row) if record is not None else None
        if result is None or result.sha256 != sha or not result.predictions:
            return None
        return artifacts.load_predictions(arts.dir / result.predictions["file"], result.predictions)
    except ArtifactError as exc:
        notes.append(f"{arts.name} {row}: {exc.message}; compared by interval overlap")
        return None


def build_section(rows: list[McuRow], budget: McuBudget, judge) -> McuSection:
    """Which rows fit the budget and why the others do not; the pick under a stated budget."""
    section = McuSection(rows, budget)
    for r in rows:
        r.why_not = budget.why_not(r.flash_bytes, r.arena_bytes)
        r.smallest_board = smallest_fitting(r.flash_bytes, r.arena_bytes)
        if not r.pickable:
            r.why_not.append(_unpickable(r))
    estimated = [r for r in rows if not r.arena_measured]
    if estimated:
        section.notes.append(f"{len(estimated)} rows show the toolkit's arena estimate (~): TFLM has not "
                             "measured them (install the mcu extra and run `toolkit parity`)")
    if not budget.stated:
        section.pick_text = ("No microcontroller budget: give --board NAME (or --max-flash-kib / "
                             "--max-ram-kib) for a pick.")
        return section
    fits = [r for r in rows if not r.why_not]
    if not fits:
        section.pick_text = f"Microcontroller pick: none fits the {budget.describe()} (see `fits` above)."
        return section
    best = max(fits, key=lambda r: (r.accuracy, -r.mflops))
    tied = [r for r in fits if r is best or judge.accuracy(best, r).better is None]
    for r in tied:
        r.tied = True
    section.pick = min(tied, key=lambda r: (r.mflops, r.flash_bytes))
    section.pick_text = _pick_text(section.pick, best, tied, budget)
    return section


def _unpickable(r: McuRow) -> str:
    if r.parity != "pass":
        return f"TFLM parity {r.parity}" + (" (run `toolkit parity`)" if r.parity in ("not run", "stale")
                                            else "")
    return "arena not measured by TFLM"


def _pick_text(pick: McuRow, best: McuRow, tied: Sequence[McuRow], budget: McuBudget) -> str:
    text = (f"Microcontroller pick for the {budget.describe()}: #{pick.number} {pick.label} — the fewest "
            f"MFLOPs/image ({pick.mflops:.1f}) of the {len(tied)} fitting rows tied with the most accurate "
            f"fitting row, #{best.number} {best.label} ({best.accuracy:.4f}). Accuracy {pick.accuracy:.4f} "
            f"under TFLM, model {pick.flash_bytes / KIB:,.1f} KiB of flash, arena "
            f"{pick.arena_bytes / KIB:,.1f} KiB of RAM (measured minimum + margin)")
    if pick.c_source:
        text += f"; C source for the firmware: {pick.spec}/{pick.c_source}/"
    return text + "."


TITLES = ["#", "spec", "file", "TFLM parity", "accuracy ± 95% CI", "model KiB (flash)", "arena KiB (RAM)",
          "params", "MFLOPs", "host ms/image", "smallest board", "fits"]


def cells(section: McuSection) -> list[list[str]]:
    out = []
    for r in section.rows:
        ci = r.accuracy_interval
        accuracy = "-" if ci is None else f"{r.accuracy:.2%} ±{(ci.high - ci.low) * 50:.2f}"
        mark = "" if r.arena_measured else "~"
        arena = "-" if r.arena_bytes is None else f"{mark}{r.arena_bytes / KIB:,.1f}"
        fits = ("-" if not section.budget.stated else "yes" + (" ◀ pick" if r is section.pick else
                                                               " (tied)" if r.tied else "")
                if not r.why_not else "no: " + "; ".join(r.why_not))
        out.append([str(r.number), r.spec, r.key, r.parity, accuracy, f"{r.flash_bytes / KIB:,.1f}", arena,
                    f"{r.params:,}", f"{r.mflops:.1f}", "-" if r.host_ms is None else f"{r.host_ms:.2f}",
                    r.smallest_board.name if r.smallest_board else "none listed", fits])
    return out


EXPLAINED = ("Microcontroller rows: each full-integer TFLite file as TFLite Micro's reference kernels run it "
             "(`TFLM parity`: its own row, on the 10,000 test images). model KiB: the .tflite file, the "
             "array a firmware links into flash; arena KiB: what a firmware reserves for the tensor arena "
             "(TFLM's measured minimum on a 64-bit host, an upper bound for a 32-bit MCU, plus the largest "
             "CMSIS-NN scratch buffer; `~`: the toolkit's estimate, TFLM has not run it). host ms/image: "
             "this x86 host running TFLM's reference kernels, not a device's latency. smallest board: the "
             "smallest of `toolkit report --board`'s boards whose budget (datasheet flash and SRAM less the "
             "stated headroom for TFLM's code and the application) holds it.")


def to_csv(section: McuSection) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["spec", "file", "tflm_row", "tflm_parity", "accuracy", "images", "flash_bytes",
                     "arena_bytes", "arena_measured", "params", "mflops", "host_ms_per_image",
                     "smallest_board", "fits", "why_not", "pick"])
    for r in section.rows:
        writer.writerow([r.spec, r.key, r.row, r.parity, "" if r.accuracy is None else r.accuracy,
                         r.images or "", r.flash_bytes, "" if r.arena_bytes is None else r.arena_bytes,
                         r.arena_measured, r.params, round(r.mflops, 4),
                         "" if r.host_ms is None else r.host_ms,
                         r.smallest_board.name if r.smallest_board else "",
                         "" if not section.budget.stated else not r.why_not, "; ".join(r.why_not),
                         r is section.pick])
    return buf.getvalue()
