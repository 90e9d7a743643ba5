"""Accuracy against deployment cost: join metrics.json, exports.json/parity.json and the benchmark
runs under ARTIFACTS/bench/ into one table, mark the Pareto fronts, name a pick for a budget.

One row per spec x format x precision x runtime x device. A row states the thread count its
figures were measured at: the count with the lowest batch-1 p50 among those benchmarked, and the
throughput (largest batch) at that same count. A benchmark result is used only if it measured
the file that is there now (same SHA-256): results of a replaced model or export are dropped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import artifacts, runtimes
from toolkit.benchmark.peaks import PEAK_KINDS, pct_of_peak, peak_for, peak_value
from toolkit.benchmark.plan import KERAS_KEY
from toolkit.benchmark.results import BenchRun, InferenceResult, read_runs
from toolkit.errors import ArtifactError


@dataclass
class Row:
    spec: str
    key: str
    format: str
    precision: str
    runtime: str
    device: str
    threads: int | None
    accuracy: float | None
    keras_accuracy: float | None
    parity: str
    size_mb: float
    params: int
    mflops: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    throughput_batch: int | None = None
    pct_peak: float | None = None
    peak: float | None = None
    front_latency: bool = False
    front_size: bool = False
    measured_at: str | None = None
    load_avg: float | None = None  # highest 1-minute load average among the results used

    @property
    def delta(self) -> float | None:
        if self.accuracy is None or self.keras_accuracy is None:
            return None
        return self.accuracy - self.keras_accuracy

    @property
    def label(self) -> str:
        return f"{self.spec} {self.key} {self.runtime} {self.device}"


@dataclass
class Report:
    root: Path
    rows: list[Row]
    peaks: dict[str, dict[str, float]]
    pick: Row | None
    pick_text: str
    budget: dict[str, float | None]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- joining


@dataclass(frozen=True)
class _File:
    """One benchmarked file of a spec, as the report joins it: what it is and what parity says."""

    key: str
    format: str
    precision: str
    path: Path
    sha256: str | None  # of the file there now
    parity: str  # "reference" | "pass" | "fail" | "not run" | "stale"
    accuracy: float | None  # as parity measured it, on this exact file
    reference_accuracy: float | None  # Keras on the same images


def _best_peaks(runs: Sequence[BenchRun]) -> dict[str, dict[str, float]]:
    """The highest peak each (precision, threads) reached in any run: a peak is the best the
    machine did, and a peak measured while other work shared the CPU only reads low."""
    best: dict[str, dict[str, float]] = {kind: {} for kind in PEAK_KINDS}
    for run in runs:
        for kind in best:
            for threads, entry in ((run.peaks or {}).get(kind) or {}).items():
                value = peak_value(entry)
                if value and value > best[kind].get(threads, 0):
                    best[kind][threads] = float(value)
    return best


def _latest_results(runs: Sequence[BenchRun]) -> dict[tuple, InferenceResult]:
    latest: dict[tuple, InferenceResult] = {}
    for run in runs:  # oldest first: later runs replace earlier ones
        for r in run.results:
            if r.stats is not None:
                latest[r.case.identity] = r
    return latest


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (accuracy, cost) points: True where no other point is at least as accurate and at most
    as costly, and strictly better in one of the two."""
    flags = []
    for i, (acc, cost) in enumerate(points):
        dominated = any(
            a >= acc and c <= cost and (a > acc or c < cost) for j, (a, c) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags


def _spec_names(base: Path, exps: Sequence[str] | None) -> list[str]:
    from toolkit.specs import match_specs

    names = artifacts.trained_specs(base)
    if exps:
        allowed = {s.name for s in match_specs(list(exps))}
        names = [n for n in names if n in allowed]
    if not names:
        raise ArtifactError(
            f"no trained model under {base}{' for --exp ' + ', '.join(exps) if exps else ''}. "
            "Train one first: toolkit train --exp CNN_1L_Dropout_Exp6"
        )
    return names


def _files(arts: artifacts.SpecArtifacts, keras_accuracy: float | None, notes: list[str]) -> list[_File]:
    """model.keras and every export that is there, each with the parity of that very file."""
    from toolkit.export.record import read_exports
    from toolkit.export.registry import FORMATS

    files = [_File(KERAS_KEY, "keras", "fp32", arts.model, artifacts.sha256_file(arts.model), "reference",
                   keras_accuracy, keras_accuracy)]
    for entry in read_exports(arts).exports:
        fmt = FORMATS.get(entry.key)
        if fmt is None:
            continue
        path = arts.dir / entry.path
        if not entry.exported:
            notes.append(f"{arts.name} {fmt.key}: export failed ({entry.error}); not in the table")
            continue
        if not path.is_file():
            notes.append(f"{arts.name} {fmt.key}: listed in exports.json but {path} is missing")
            continue
        sha = artifacts.sha256_file(path)
        state = entry.parity_state(sha)
        checked = entry.parity if state in ("pass", "fail") else None
        if state == "stale":
            notes.append(f"{arts.name} {fmt.key}: {path.name} changed since parity checked it; its parity "
                         f"and accuracy are unknown until `toolkit parity --exp {arts.name}` reruns")
        # Parity evaluated Keras and the export on the same images in one go: compare those.
        reference = (checked.keras_accuracy if checked else None) or keras_accuracy
        files.append(_File(fmt.key, fmt.format, fmt.precision, path, sha, state,
                           checked.test_accuracy if checked else None, reference))
    return files


def _spec_rows(arts: artifacts.SpecArtifacts, *, latest: dict[tuple, InferenceResult],
               peaks: dict[str, dict[str, float]], notes: list[str]) -> tuple[list[Row], int]:
    """The rows of one spec and how many benchmark results measured files since replaced."""
    from toolkit.specs import get_spec

    metrics = arts.require_trained()
    spec = get_spec(arts.name)
    rows: list[Row] = []
    stale = 0
    for file in _files(arts, metrics.get("test_accuracy"), notes):
        mine = [r for ident, r in latest.items() if ident[0] == arts.name and ident[1] == file.key]
        fresh = [r for r in mine if r.case.sha256 == file.sha256]
        stale += len(mine) - len(fresh)
        groups: dict[tuple[str, str], list[InferenceResult]] = {}
        for r in fresh:
            device = f"{r.case.device}-{r.case.io}" if r.case.io else r.case.device
            groups.setdefault((r.case.runtime, device), []).append(r)
        for (runtime, device), results in sorted(groups.items()):
            rows.append(_row(spec=spec, file=file, runtime=runtime, device=device, results=results,
                             peaks=peaks))
    return rows, stale


def build_report(
    root: str | Path | None = None,
    *,
    exps: Sequence[str] | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    tolerance: float = 0.001,
) -> Report:
    base = artifacts.resolve_root(root)
    names = _spec_names(base, exps)
    runs = read_runs(base)
    if not runs:
        raise ArtifactError(
            f"no benchmark results under {artifacts.bench_dir(base)}. "
            "Run `toolkit bench` or `pytest bench/ --benchmark-only` first"
        )
    latest, peaks = _latest_results(runs), _best_peaks(runs)
    notes: list[str] = []
    rows: list[Row] = []
    stale = 0
    for name in names:
        spec_rows, spec_stale = _spec_rows(artifacts.spec_artifacts(name, base), latest=latest, peaks=peaks,
                                           notes=notes)
        rows += spec_rows
        stale += spec_stale
    if stale:
        notes.append(
            f"{stale} benchmark results measured files that have since been replaced "
            "(different SHA-256) and were left out; rerun `toolkit bench` to measure the new ones"
        )
    if not rows:
        raise ArtifactError(
            f"no benchmark result under {artifacts.bench_dir(base)} matches the current models "
            "and exports; run `toolkit bench` (or pytest bench/) again"
        )
    _mark_fronts(rows)
    budget = {"max_latency_ms": max_latency_ms, "max_size_mb": max_size_mb}
    pick, text = recommend(rows, max_latency_ms=max_latency_ms, max_size_mb=max_size_mb, tolerance=tolerance)
    notes += _load_notes(rows)
    notes.append(_peak_note(peaks, runs))
    return Report(base, rows, peaks, pick, text, budget, notes)


def _load_notes(rows: Sequence[Row]) -> list[str]:
    notes = []
    loads = [r.load_avg for r in rows if r.load_avg is not None]
    cores = runtimes.cpu_count()
    if loads and max(loads) > cores * 0.75:
        notes.append(
            f"1-minute load average while these rows were measured: {min(loads):.1f}-{max(loads):.1f} "
            f"on {cores} cores: other work shared the CPU, so timings are noisy"
        )
    over = [r for r in rows if r.pct_peak is not None and r.pct_peak > 100]
    if over:
        notes.append(
            f"{len(over)} rows exceed 100% of the measured peak: the GEMM peak was measured while the CPU "
            "was shared and reads low; rerun `toolkit bench` on a quiet machine to re-measure it"
        )
    return notes


def _row(*, spec, file: _File, runtime: str, device: str, results: Sequence[InferenceResult],
         peaks: dict[str, dict[str, float]]) -> Row:
    by_threads: dict[int, dict[int, InferenceResult]] = {}
    for r in results:
        by_threads.setdefault(r.case.threads, {})[r.case.batch] = r
    with_b1 = [t for t, b in by_threads.items() if 1 in b]
    threads = min(with_b1, key=lambda t: by_threads[t][1].stats.p50_ms) if with_b1 else max(by_threads)
    chosen = by_threads[threads]
    b1 = chosen.get(1)
    big = chosen[max(chosen)] if max(chosen) > 1 else None
    row = Row(
        spec=spec.name, key=file.key, format=file.format, precision=file.precision, runtime=runtime,
        device=device, threads=threads, accuracy=file.accuracy, keras_accuracy=file.reference_accuracy,
        parity=file.parity, size_mb=file.path.stat().st_size / 1e6, params=spec.param_count(),
        mflops=spec.mflops_per_image(),
        measured_at=max(r.measured_at or "" for r in results),
        load_avg=max((r.load_avg_1m for r in chosen.values() if r.load_avg_1m is not None), default=None),
    )
    if b1:
        row.p50_ms, row.p99_ms = b1.stats.p50_ms, b1.stats.p99_ms
    if big:
        row.throughput, row.throughput_batch = big.stats.images_per_s, big.case.batch
        peak = peak_for({k: {t: {"gflops": v} for t, v in d.items()} for k, d in peaks.items()},
                        file.precision, threads)
        if peak and device == "cpu":
            row.peak = peak
            row.pct_peak = pct_of_peak(mflops_per_image=row.mflops, images_per_s=row.throughput, peak=peak)
    return row


def _mark_fronts(rows: list[Row]) -> None:
    with_acc = [r for r in rows if r.accuracy is not None]
    timed = [r for r in with_acc if r.p50_ms is not None]
    for r, flag in zip(timed, pareto_front([(r.accuracy, r.p50_ms) for r in timed]), strict=True):
        r.front_latency = flag
    for r, flag in zip(with_acc, pareto_front([(r.accuracy, r.size_mb) for r in with_acc]), strict=True):
        r.front_size = flag


def recommend(
    rows: Sequence[Row],
    *,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    tolerance: float = 0.001,
) -> tuple[Row | None, str]:
    """The most accurate row that fits the budget and passed parity; rows within `tolerance` of the
    best accuracy count as tied, and the fastest of those wins (then the smallest)."""
    usable = [
        r
        for r in rows
        if r.accuracy is not None
        and r.p50_ms is not None
        and r.parity in ("pass", "reference")
        and r.device.startswith(("cpu", "gpu"))
    ]
    fits = [
        r
        for r in usable
        if (max_latency_ms is None or r.p50_ms <= max_latency_ms)
        and (max_size_mb is None or r.size_mb <= max_size_mb)
    ]
    stated = ", ".join(
        s
        for s in (
            f"p50 batch-1 latency <= {max_latency_ms:g} ms" if max_latency_ms is not None else "",
            f"size <= {max_size_mb:g} MB" if max_size_mb is not None else "",
        )
        if s
    )
    budget = f"budget ({stated})" if stated else "no budget (set one with --max-latency-ms / --max-size-mb)"
    if not fits:
        if not usable:
            return None, f"Recommended pick: none ({budget}): no row has accuracy, latency and passed parity."
        fastest = min(usable, key=lambda r: r.p50_ms)
        smallest = min(usable, key=lambda r: r.size_mb)
        return None, (
            f"Recommended pick: none fits the {budget}. Fastest: {fastest.label} at "
            f"{fastest.p50_ms:.3f} ms; smallest: {smallest.label} at {smallest.size_mb:.3f} MB."
        )
    best = max(r.accuracy for r in fits)
    tied = [r for r in fits if r.accuracy >= best - tolerance]
    pick = min(tied, key=lambda r: (r.p50_ms, r.size_mb))
    why = (
        f"the most accurate row with parity passed, {'within the ' if stated else 'with '}{budget}; "
        f"accuracies within {tolerance * 100:.2g} pt of the best count as tied and the fastest wins. "
        f"accuracy {pick.accuracy:.4f}, p50 {pick.p50_ms:.3f} ms at batch 1 on {pick.threads} thread(s), "
        f"{pick.size_mb:.3f} MB, parity {pick.parity}"
    )
    return pick, f"Recommended pick: {pick.label} — {why}."


def _peak_note(peaks: dict[str, dict[str, float]], runs: Sequence[BenchRun]) -> str:
    kernel = None
    for run in reversed(runs):
        for entry in ((run.peaks or {}).get("fp32") or {}).values():
            kernel = kernel or entry.get("blas_kernel")
    fp32 = ", ".join(f"{t} thr {v:.0f}" for t, v in sorted(peaks["fp32"].items()))
    int8 = ", ".join(f"{t} thr {v:.0f}" for t, v in sorted(peaks["int8"].items()))
    ort = ", ".join(f"{t} thr {v:.0f}" for t, v in sorted(peaks["fp32_ort"].items()))
    return (
        f"% of peak = MFLOPs/image x images/s against the best measured GEMM peak for the row's compute "
        f"precision and thread count: float32 numpy/OpenBLAS ({kernel}) {fp32} GFLOP/s "
        f"(ONNX Runtime MatMul: {ort}); int8 ONNX Runtime MatMulInteger {int8} GOP/s. fp16 files compute "
        "in float32 on this CPU; dynamic quantization runs int8 GEMMs."
    )


# ---------------------------------------------------------------- output


SHORT_RUNTIME = {
    "keras": "keras",
    "keras-predict": "predict",
    "onnxruntime": "ORT",
    "onnxruntime-cuda": "ORT-CUDA",
    "litert": "LiteRT",
}
COLUMNS = [
    "spec",
    "format",
    "runtime",
    "device",
    "thr",
    "test acc",
    "Δ vs Keras",
    "parity",
    "size MB",
    "params",
    "MFLOPs",
    "p50 ms b1",
    "p99 ms b1",
    "img/s",
    "% peak",
    "front",
]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(rep: Report) -> tuple[list[str], list[list[str]]]:
    out = []
    for r in rep.rows:
        front = ("L" if r.front_latency else "") + ("S" if r.front_size else "")
        thr_batch = f"{r.throughput:,.0f} (b{r.throughput_batch})" if r.throughput else "-"
        mark = " ◀ pick" if r is rep.pick else ""
        out.append(
            [
                r.spec,
                r.key,
                r.runtime,
                r.device,
                str(r.threads),
                _fmt(r.accuracy, ".4f"),
                _fmt(r.delta, "+.4f") if r.key != KERAS_KEY else "ref",
                r.parity,
                f"{r.size_mb:.3f}",
                f"{r.params:,}",
                f"{r.mflops:.2f}",
                _fmt(r.p50_ms, ".3f"),
                _fmt(r.p99_ms, ".3f"),
                thr_batch,
                _fmt(r.pct_peak, ".1f"),
                (f"*{front}" if front else "") + mark,
            ]
        )
    return COLUMNS, out


def to_markdown(rep: Report, plots: Sequence[Path]) -> str:
    columns, rows = table_rows(rep)
    lines = [
        "# Accuracy vs deployment cost",
        "",
        f"Artifacts root: `{rep.root}`. One row per spec x format x precision x runtime x device; `thr` is "
        "the thread count the row was measured at (the one with the lowest batch-1 p50); throughput is at "
        "the largest benchmarked batch on the same thread count. Front: `L` = Pareto front of accuracy vs "
        "batch-1 p50 latency, `S` = accuracy vs file size.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    lines += ["", f"**{rep.pick_text}**", ""]
    lines += [f"- {note}" for note in rep.notes]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "spec",
            "format_key",
            "format",
            "precision",
            "runtime",
            "device",
            "threads",
            "test_accuracy",
            "delta_vs_keras",
            "parity",
            "size_mb",
            "params",
            "mflops_per_image",
            "p50_ms_batch1",
            "p99_ms_batch1",
            "images_per_s",
            "throughput_batch",
            "pct_of_peak",
            "peak_g_per_s",
            "pareto_latency",
            "pareto_size",
            "recommended",
            "measured_at",
        ]
    )
    for r in rep.rows:
        writer.writerow(
            [
                r.spec,
                r.key,
                r.format,
                r.precision,
                r.runtime,
                r.device,
                r.threads,
                r.accuracy,
                r.delta,
                r.parity,
                round(r.size_mb, 6),
                r.params,
                round(r.mflops, 4),
                r.p50_ms,
                r.p99_ms,
                r.throughput,
                r.throughput_batch,
                r.pct_peak,
                r.peak,
                r.front_latency,
                r.front_size,
                r is rep.pick,
                r.measured_at,
            ]
        )
    return buf.getvalue()


def plot(rep: Report, which: str, target: Path) -> Path | None:
    """Accuracy against batch-1 p50 latency ("latency") or file size ("size"), front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = (lambda r: r.p50_ms) if which == "latency" else (lambda r: r.size_mb)
    flag = (lambda r: r.front_latency) if which == "latency" else (lambda r: r.front_size)
    points = [r for r in rep.rows if r.accuracy is not None and cost(r) is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(11.5, 6.5), dpi=110)
    markers = {"keras": "s", "onnx": "o", "tflite": "^"}
    runtimes_seen = sorted({r.runtime for r in points})
    colors = {rt: plt.cm.tab10(i % 10) for i, rt in enumerate(runtimes_seen)}
    for i, r in enumerate(sorted(points, key=cost)):
        ax.scatter(
            cost(r),
            r.accuracy * 100,
            marker=markers.get(r.format, "o"),
            s=70,
            color=colors[r.runtime],
            edgecolors="black" if flag(r) else "none",
            linewidths=1.2,
            zorder=3,
        )
        label = f"{r.key} {SHORT_RUNTIME.get(r.runtime, r.runtime)}"
        if r.device != "cpu":
            label += f" {r.device}"
        if len({p.spec for p in points}) > 1:
            label += f" ({r.spec})"
        # Cycle through four offsets so neighbours at the same accuracy do not print over each other.
        dx, dy = ((6, 6), (6, -12), (-6, 16), (-6, -22))[i % 4]
        ax.annotate(
            label,
            (cost(r), r.accuracy * 100),
            textcoords="offset points",
            xytext=(dx, dy),
            ha="left" if dx > 0 else "right",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5},
        )
    front = sorted((r for r in points if flag(r)), key=cost)
    if front:
        ax.step(
            [cost(r) for r in front],
            [r.accuracy * 100 for r in front],
            where="post",
            color="gray",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
            zorder=2,
        )
    if rep.pick is not None and rep.pick in points:
        ax.scatter(
            cost(rep.pick),
            rep.pick.accuracy * 100,
            marker="*",
            s=320,
            facecolors="none",
            edgecolors="red",
            linewidths=1.5,
            label="recommended pick",
            zorder=4,
        )
    for rt in runtimes_seen:
        ax.scatter([], [], color=colors[rt], label=rt)
    for fmt, m in markers.items():
        if any(r.format == fmt for r in points):
            ax.scatter([], [], marker=m, color="white", edgecolors="black", label=f"{fmt} file")
    ax.set_xscale("log")
    ax.set_xlabel(
        "batch-1 p50 latency (ms, log scale)" if which == "latency" else "file size (MB, log scale)"
    )
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"Accuracy vs {'latency' if which == 'latency' else 'size'} "
        "(black edge: Pareto front; colour: runtime; shape: file format)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    with artifacts.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


def write_report(rep: Report) -> list[Path]:
    plots = [
        p
        for p in (
            plot(rep, "latency", rep.root / "report_accuracy_vs_latency.png"),
            plot(rep, "size", rep.root / "report_accuracy_vs_size.png"),
        )
        if p
    ]
    md, csv_path = rep.root / "report.md", rep.root / "report.csv"
    artifacts.write_text(csv_path, to_csv(rep))
    artifacts.write_text(md, to_markdown(rep, plots))
    return [md, csv_path, *plots]
