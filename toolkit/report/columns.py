"""The report's columns: one list, read by the terminal table, the CSV, the markdown and
`toolkit bench`'s table. A new column is one entry here.

    Column(key, title, csv=(("csv_name", value_fn), ...), text=cell_fn, views={...})

`value_fn(row, rep)` gives a raw value for the CSV; `text(row, rep)` the formatted cell. Views:
"terminal" (toolkit report), "markdown" (report.md), "bench" (toolkit bench's table); every
column with CSV fields is in report.csv. A cell without a value is "-" and the report's notes
say why (old bench files without repeats or memory results, missing per-image predictions).
Served rows (Row.source "loadtest") read the same columns; a column that does not apply to
them returns None for such rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.benchmark.plan import KERAS_KEY
from toolkit.core.stats import fmt_p, fmt_range
from toolkit.report import mcu
from toolkit.report.rows import Report, Row

# The terminal shows the report as two tables joined by the row number (one would not fit a
# terminal): what each row is and how accurate (TERMINAL), then what it costs (TERMINAL_COST).
TERMINAL, TERMINAL_COST, MARKDOWN, BENCH_TABLE = "terminal", "terminal-cost", "markdown", "bench"
REPORT_VIEWS = frozenset({TERMINAL, MARKDOWN})
COST_VIEWS = frozenset({TERMINAL_COST, MARKDOWN, BENCH_TABLE})
ALL_VIEWS = REPORT_VIEWS | COST_VIEWS

Value = Callable[[Row, Report | None], Any]
MAX_LISTED = 6  # overlapping rows listed by number; more are counted


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    text: Callable[[Row, Report | None], str]
    csv: tuple[tuple[str, Value], ...] = ()
    views: frozenset[str] = REPORT_VIEWS
    align: str = "right"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_pm = fmt_range  # '0.438 (0.396-0.484)' with an interval, the bare value without one


def _verdict(r: Row, rep: Report | None) -> str:
    v = r.verdict
    if v is None:
        return "-"
    if v.basis == "best":
        return "best"
    word = "tied" if v.better is None else ("worse" if v.better == "a" else "better")
    if v.p_value is not None:
        p = fmt_p(v.p_value)
        return f"{word} p{'' if p.startswith('<') else '='}{p}"
    basis = "seed spread" if "seed" in v.basis else "tolerance" if "tolerance" in v.basis else "CI"
    return f"{word} ({basis})"


def _front(r: Row, rep: Report | None) -> str:
    letters = {"latency": "L", "size": "S", "memory": "M"}
    marks = [letters[c] + ("≈" if state == "tied" else "") for c, state in r.fronts.items() if state]
    text = " ".join(marks)
    if rep is not None and r is rep.pick:
        text = f"{text} ◀ pick".strip()
    return text


def _ci_bounds(interval) -> tuple[Value, Value]:
    return (lambda r, rep: None if interval(r) is None else interval(r).low,
            lambda r, rep: None if interval(r) is None else interval(r).high)


def _memory(attr: str) -> Value:
    return lambda r, rep: getattr(r.memory, attr) if r.memory is not None else None


def _check(r: Row, rep: Report | None) -> str:
    c = r.check or {}
    if not c:
        return "-"
    return f"{c['top1_mismatches']}/{c['top1_compared']} flips" if c.get("top1_checked") else "shape+finite"


def _acc_ci(r: Row, rep: Report | None) -> str:
    ci = r.accuracy_interval
    return "-" if ci is None else f"{ci.low:.4f}-{ci.high:.4f}"


def _throughput(r: Row, rep: Report | None) -> str:
    if r.throughput is None:
        return "-"
    return f"{_pm(r.throughput, r.throughput_interval, ',.0f')} (b{r.throughput_batch})"


def _settings(r: Row) -> str | None:
    """The runtime's settings behind a row's figures, as `NAME=value` pairs (OpenVINO's)."""
    return " ".join(f"{k}={v}" for k, v in r.settings.items()) if r.settings else None


def _plain(key: str, title: str, attr: str, *, views: frozenset[str] = ALL_VIEWS,
           align: str = "left") -> Column:
    """A column that shows one Row attribute as it is, under its own name in the CSV."""
    return Column(key, title, lambda r, rep: str(getattr(r, attr)),
                  ((attr, lambda r, rep: getattr(r, attr)),), views, align)


def _overlaps(key: str, title: str, measure: str, csv_name: str, views: frozenset[str]) -> Column:
    """Which rows' 95% intervals of `measure` overlap this row's ("none"; "-" without an interval)."""
    def text(r: Row, rep: Report | None) -> str:
        if getattr(r, f"{measure}_interval") is None:
            return "-"
        numbers = getattr(r, key)
        # A long list says less than its length; the CSV keeps every number.
        return f"{len(numbers)} rows" if len(numbers) > MAX_LISTED else ",".join(map(str, numbers)) or "none"

    return Column(key, title, text, ((csv_name, lambda r, rep: " ".join(map(str, getattr(r, key))) or None),),
                  views)


def _acc_low_high() -> tuple[Value, Value]:
    return _ci_bounds(lambda r: r.accuracy_interval)


def _p50_low_high() -> tuple[Value, Value]:
    return _ci_bounds(lambda r: r.p50_interval)


def _thr_low_high() -> tuple[Value, Value]:
    return _ci_bounds(lambda r: r.throughput_interval)


COLUMNS: list[Column] = [
    Column("number", "#", lambda r, rep: str(r.number), views=ALL_VIEWS, align="left"),
    Column("what", "row", lambda r, rep: " ".join(p for p in (r.key, r.runtime, r.device) if p != "cpu"),
           views=frozenset({TERMINAL_COST}), align="left"),
    _plain("spec", "spec", "spec", views=REPORT_VIEWS | {BENCH_TABLE}),
    Column("format", "format", lambda r, rep: r.key,
           (("format_key", lambda r, rep: r.key), ("format", lambda r, rep: r.format),
            ("precision", lambda r, rep: r.precision)), REPORT_VIEWS | {BENCH_TABLE}, "left"),
    _plain("runtime", "runtime", "runtime", views=REPORT_VIEWS | {BENCH_TABLE}),
    # What the runtime computes (a float32 file on OpenVINO's default: bf16), stated, never hidden.
    Column("computes", "computes", lambda r, rep: r.computes or r.precision,
           (("computes", lambda r, rep: r.computes or r.precision),), REPORT_VIEWS | {BENCH_TABLE}, "left"),
    _plain("device", "device", "device", views=REPORT_VIEWS | {BENCH_TABLE}),
    _plain("source", "source", "source", views=frozenset()),
    _plain("threads", "thr", "threads", views=REPORT_VIEWS | {BENCH_TABLE}, align="right"),
    Column("accuracy", "test acc", lambda r, rep: _num(r.accuracy, ".4f"),
           (("test_accuracy", lambda r, rep: r.accuracy), ("test_images", lambda r, rep: r.images))),
    Column("accuracy_ci", "95% CI", _acc_ci,
           tuple(zip(("test_accuracy_ci95_low", "test_accuracy_ci95_high"), _acc_low_high(), strict=True))),
    Column("seeds", "seeds mean ± sd",
           lambda r, rep: "-" if r.seeds is None else f"{r.seeds.mean:.4f} ± {r.seeds.std:.4f} ({r.seeds.n})",
           (("seeds_test_accuracy_mean", lambda r, rep: r.seeds.mean if r.seeds else None),
            ("seeds_test_accuracy_std", lambda r, rep: r.seeds.std if r.seeds else None),
            ("seeds_n", lambda r, rep: r.seeds.n if r.seeds else None))),
    Column("delta", "Δ vs Keras",
           lambda r, rep: "ref" if r.key == KERAS_KEY else _num(r.delta, "+.4f"),
           (("delta_vs_keras", lambda r, rep: r.delta),), frozenset({MARKDOWN})),
    Column("verdict", "vs best", _verdict,
           (("tied_with_best", lambda r, rep: r.tied if r.verdict else None),
            ("vs_best", lambda r, rep: _verdict(r, rep) if r.verdict else None),
            ("vs_best_p_value", lambda r, rep: r.verdict.p_value if r.verdict else None),
            ("vs_best_basis", lambda r, rep: r.verdict.basis if r.verdict else None))),
    _plain("parity", "parity", "parity", views=REPORT_VIEWS | {BENCH_TABLE}),
    Column("size", "size MB", lambda r, rep: f"{r.size_mb:.3f}",
           (("size_mb", lambda r, rep: round(r.size_mb, 6)),)),
    Column("params", "params", lambda r, rep: f"{r.params:,}", (("params", lambda r, rep: r.params),),
           frozenset({MARKDOWN})),
    Column("mflops", "MFLOPs", lambda r, rep: f"{r.mflops:.2f}",
           (("mflops_per_image", lambda r, rep: round(r.mflops, 4)),), frozenset({MARKDOWN})),
    Column("p50", "p50 ms b1 (95% CI)", lambda r, rep: _pm(r.p50_ms, r.p50_interval, ".3f"),
           (("p50_ms_batch1", lambda r, rep: r.p50_ms),
            *zip(("p50_ci95_low", "p50_ci95_high"), _p50_low_high(), strict=True)), COST_VIEWS),
    _overlaps("p50_overlaps", "p50 ≈ #", "p50", "p50_not_separable_from", COST_VIEWS),
    Column("p99", "p99 ms b1", lambda r, rep: _num(r.p99_ms, ".3f"),
           (("p99_ms_batch1", lambda r, rep: r.p99_ms),), frozenset({MARKDOWN})),
    Column("throughput", "img/s (95% CI)", _throughput,
           (("images_per_s", lambda r, rep: r.throughput),
            *zip(("images_per_s_ci95_low", "images_per_s_ci95_high"), _thr_low_high(), strict=True),
            ("throughput_batch", lambda r, rep: r.throughput_batch)), COST_VIEWS),
    _overlaps("throughput_overlaps", "img/s ≈ #", "throughput", "throughput_not_separable_from",
              frozenset({MARKDOWN})),
    Column("processes", "procs", lambda r, rep: str(r.processes or "-"),
           (("processes", lambda r, rep: r.processes or None),), COST_VIEWS),
    Column("pct_peak", "% peak", lambda r, rep: _num(r.pct_peak, ".1f"),
           (("pct_of_peak", lambda r, rep: r.pct_peak), ("peak_g_per_s", lambda r, rep: r.peak),
            ("peak_kind", lambda r, rep: r.peak_kind)), COST_VIEWS),
    Column("isa", "kernels' ISA", lambda r, rep: ", ".join(r.isa) if r.isa else "-",
           (("isa", lambda r, rep: " ".join(r.isa) if r.isa else None),
            ("runtime_settings", lambda r, rep: _settings(r))), frozenset({MARKDOWN})),
    Column("rss_b1", "RSS b1 MB", lambda r, rep: _num(r.peak_b1_mb, ".0f"),
           (("peak_rss_b1_mb", _memory("peak_b1_mb")),), COST_VIEWS),
    Column("rss_batch", "RSS b256 MB", lambda r, rep: _num(_memory("peak_batch_mb")(r, rep), ".0f"),
           (("peak_rss_batch_mb", _memory("peak_batch_mb")), ("memory_batch", _memory("batch"))),
           frozenset({MARKDOWN})),
    Column("load", "load ms", lambda r, rep: _num(_memory("load_ms")(r, rep), ".0f"),
           (("load_ms", _memory("load_ms")),), COST_VIEWS),
    Column("first_call", "1st call ms", lambda r, rep: _num(_memory("first_call_ms")(r, rep), ".1f"),
           (("first_call_ms", _memory("first_call_ms")),), COST_VIEWS),
    Column("cold_start", "cold start ms", lambda r, rep: _num(_memory("cold_start_ms")(r, rep), ",.0f"),
           (("cold_start_ms", _memory("cold_start_ms")), ("memory_processes", _memory("processes")),
            ("memory_note", lambda r, rep: r.memory_note or None)), frozenset({MARKDOWN})),
    Column("check", "output check", _check, (), frozenset({BENCH_TABLE})),
    Column("front", "front", _front,
           (("front_latency", lambda r, rep: r.fronts.get("latency", "")),
            ("front_size", lambda r, rep: r.fronts.get("size", "")),
            ("front_memory", lambda r, rep: r.fronts.get("memory", "")),
            ("recommended", lambda r, rep: rep is not None and r is rep.pick),
            ("measured_at", lambda r, rep: r.measured_at)), frozenset({TERMINAL_COST, MARKDOWN}), "left"),
]
BY_KEY = {c.key: c for c in COLUMNS}


def columns_for(view: str) -> list[Column]:
    return [c for c in COLUMNS if view in c.views]


def table_rows(rep: Report, view: str = MARKDOWN, rows: Sequence[Row] | None = None) -> tuple[list[str],
                                                                                                list[list[str]]]:
    """(titles, cells) of `view` for the report's rows (or `rows`)."""
    cols = columns_for(view)
    chosen = rep.rows if rows is None else rows
    return [c.title for c in cols], [[c.text(r, rep) for c in cols] for r in chosen]


def to_csv(rep: Report) -> str:
    fields = [(name, fn) for c in COLUMNS for name, fn in c.csv]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([name for name, _ in fields])
    for r in rep.rows:
        writer.writerow(["" if (v := fn(r, rep)) is None else v for _, fn in fields])
    return buf.getvalue()


def _md_table(titles: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    return lines + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]


def baseline_rows(rep: Report) -> list[list[str]]:
    return [[runtime, _num(b["python_numpy_mb"], ".0f"), _num(b["runtime_imported_mb"], ".0f"),
             str(b["processes"])] for runtime, b in rep.baselines.items()]


BASELINE_TITLES = ["runtime", "python + numpy MB", "runtime imported, no model MB", "processes"]


def to_markdown(rep: Report, plots: Sequence[Path]) -> str:
    titles, rows = table_rows(rep, MARKDOWN)
    lines = [
        "# Accuracy vs deployment cost",
        "",
        f"Artifacts root: `{rep.root}`. One row per spec x format x precision x runtime x device; `thr` is "
        "the thread count the row was measured at (the one with the lowest batch-1 p50); throughput is at "
        "the largest benchmarked batch on the same thread count.",
        "",
        "How to read it: `95% CI` is the Wilson interval of the test accuracy; `seeds mean ± sd`: test "
        "accuracy across the spec's completed seeds of one recipe (what separates two trainings); "
        "`vs best` compares the row "
        f"with the most accurate row within the budget: {rep.rule}. `p50 ms b1` and `img/s` are geometric "
        "means across the processes that measured them (`procs`) with their 95% t-interval on the log "
        "scale (timings are positive and a shared CPU slows them by factors); `p50 ≈ #` and "
        "`img/s ≈ #` list the rows whose interval overlaps this one's (not separable). RSS is the peak "
        "resident memory (VmHWM) of a fresh process serving batch 1 / batch 256 (at the largest "
        "benchmarked thread count, whatever `thr` says); load = file to a ready runtime; "
        "1st call = the first batch-1 call; cold start = process start to the first answer (medians over "
        "the processes). `computes`: the precision the runtime computes (a float32 file on OpenVINO's "
        "default runs in bf16); `% peak` compares with the row's own runtime's matrix multiply at that "
        "precision (`peak_kind` in the CSV); `kernels' ISA`: the instruction sets of the kernels that ran "
        "the weighted layers, where the runtime says (OpenVINO). Front: `L` latency, `S` size, `M` batch-1 "
        "memory; a row is dominated only by a row that costs less with non-overlapping intervals and is "
        "not significantly less accurate; `≈`: on the front but not separable from another front row.",
        "",
        *_md_table(titles, rows),
        "",
        f"**{rep.pick_text}**",
        "",
    ]
    if rep.baselines:
        lines += ["Memory baselines (peak RSS of the same fresh processes before loading the model):", "",
                  *_md_table(BASELINE_TITLES, baseline_rows(rep)), ""]
    lines += [f"- {note}" for note in rep.notes]
    if rep.mcu is not None:
        lines += ["", "## Microcontroller (TFLite Micro)", "", mcu.EXPLAINED, "",
                  *_md_table(mcu.TITLES, mcu.cells(rep.mcu)), "", f"**{rep.mcu.pick_text}**", ""]
        lines += [f"- {note}" for note in rep.mcu.notes]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"
