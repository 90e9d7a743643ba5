"""`toolkit sweep`: train specs x seeds (local or Ray), reuse completed runs, tabulate them."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from toolkit.cli.options import ArtifactsOption, DataDirOption, LimitOption, MixedPrecisionOption
from toolkit.cli.output import console, print_table

SweepExpsOption = Annotated[
    list[str] | None,
    typer.Option("--exp", help="Spec name or glob such as 'CNN_*'; repeat for several. Default: all 17."),
]


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class SweepDisplay:
    """What the live display shows, rebuilt from the sweep state at each refresh."""

    def __init__(self, state) -> None:
        self.state = state

    def __rich__(self):
        state = self.state
        counts = state.counts()
        done = counts["trained"] + counts["reused"]
        head = Text.assemble(
            ("sweep ", "bold"), f"{done + counts['failed']}/{len(state.runs)} runs done ",
            (f"({counts['trained']} trained, {counts['reused']} reused", "green"),
            (f", {counts['failed']} failed" if counts["failed"] else "", "red"), (") · ", "green"),
            (f"{counts['running']} running", "yellow"), f" · {counts['queued']} queued · ",
            f"elapsed {_clock(time.time() - state.started)} · ETA {_clock(state.eta_seconds())}",
        )
        table = Table(show_edge=False, pad_edge=False, box=None)
        for col in ("running", "seed", "epoch", "loss", "acc", "val acc", "for"):
            table.add_column(col)
        for run in list(state.runs):
            if run.state != "running":
                continue
            logs = run.logs
            table.add_row(
                run.spec.name, str(run.seed), f"{run.epoch}/{run.spec.epochs}",
                f"{logs['loss']:.4f}" if "loss" in logs else "-",
                f"{logs['accuracy']:.4f}" if "accuracy" in logs else "-",
                f"{logs['val_accuracy']:.4f}" if "val_accuracy" in logs else "-",
                _clock(time.time() - run.started) if run.started else "-",
            )
        recent = [r for r in state.runs if r.state == "failed"][-3:]
        lines = [Text(f"failed: {r.key}: {r.error}", style="red") for r in recent]
        return Group(head, *([table] if table.rows else []), *lines)


class _RunLog:
    """One line per finished run above the live display: the record a log file keeps."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, state) -> None:
        for run in list(state.runs):
            if not run.done or run.key in self.seen:
                continue
            self.seen.add(run.key)
            took = f" in {run.finished - run.started:.0f} s" if run.started and run.finished else ""
            if run.state == "failed":
                console.print(f"[red]failed[/] {run.key}{took}: {escape(run.error or '')}",
                              soft_wrap=True)
            else:
                acc = run.metrics.get("test_accuracy") if run.metrics else None
                acc_text = f"test acc {acc:.4f}" if acc is not None else ""
                console.print(f"[green]{run.state}[/] {run.key}{took} {acc_text}")


def print_results(state, rows) -> None:
    from toolkit.experiments import sweep_tables

    print_table(f"Sweep: accuracy vs the seed's Tables 3/4 — {sweep_tables.describe_settings(state)}",
                sweep_tables.ACC_COLUMNS, sweep_tables.accuracy_rows(rows, state.seeds))
    print_table("Sweep: loss and training time (seed's losses carry its softmax/logits bug)",
                sweep_tables.LOSS_COLUMNS, sweep_tables.loss_rows(rows))
    caveat = sweep_tables.epochs_caveat(state)
    if caveat:
        console.print(f"[yellow]{caveat}[/]")
    for row in rows:
        for err in row.errors:
            console.print(f"[red]failed:[/] {row.spec.name} {escape(err)}", soft_wrap=True)


def sweep_cmd(
    exp: SweepExpsOption = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Train seeds 0..N-1 of each spec.", min=1)] = 1,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Epochs per run (default: the spec's 20).", min=1)
    ] = None,
    limit_train: LimitOption = None,
    backend: Annotated[str, typer.Option("--backend", help="local (one run at a time) or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to join (default: start a local one).")
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option("--max-concurrent", help="Ray: runs in flight at once (default: CPUs / cpus-per-run).",
                     min=1),
    ] = None,
    cpus_per_run: Annotated[
        int, typer.Option("--cpus-per-run", help="Ray: CPUs each run declares (and TF uses).", min=1)
    ] = 1,
    table: Annotated[
        bool, typer.Option("--table", help="Only tabulate the completed runs; train nothing.")
    ] = False,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
    mixed_precision: MixedPrecisionOption = None,
) -> None:
    """Train every matching spec for seeds 0..N-1 (reusing completed runs) and write
    ARTIFACTS/sweep.{md,csv,png}: this toolkit's figures beside the seed's Tables 3 and 4."""
    from toolkit.experiments import sweep_plan, sweep_tables

    state = sweep_plan.plan_sweep(exp, seeds=seeds, epochs=epochs, limit_train=limit_train,
                                  backend=backend, mixed_precision=mixed_precision)
    if table:
        outputs = _tabulate(state, artifacts, data_dir)
    else:
        outputs = _sweep(state, artifacts, data_dir, address=address, max_concurrent=max_concurrent,
                         cpus_per_run=cpus_per_run)
    console.print(f"Wrote {outputs.markdown}, {outputs.csv} and {outputs.chart}.")
    if not table:
        sweep_tables.raise_if_failed(state, outputs)


def _tabulate(state, artifacts, data_dir):
    """--table: the completed runs only, nothing trained."""
    from toolkit.core.errors import ArtifactError
    from toolkit.experiments import sweep, sweep_tables

    sweep.collect(state, root=artifacts, data_dir=data_dir)
    rows = sweep_tables.summarize(state)
    if not any(r.done for r in rows):
        root = sweep_tables.output_paths(artifacts).markdown.parent
        raise ArtifactError(
            f"no completed runs under {root} for {sweep_tables.describe_settings(state)}; run the "
            "sweep first (the same options without --table)"
        )
    print_results(state, rows)
    outputs = sweep_tables.write_outputs(state, rows, artifacts, record=False)
    missing = sum(r.state == "missing" for r in state.runs)
    if missing:
        console.print(f"[yellow]{missing} of {len(state.runs)} runs are not complete yet[/]; "
                      "they are left out of the means.")
    return outputs


def _sweep(state, artifacts, data_dir, **backend_options):
    """Train (or reuse) every run under a live display, then tabulate."""
    from toolkit.experiments import sweep, sweep_ray, sweep_tables

    if state.backend == "ray":
        sweep_ray.import_ray()  # fail in one line before anything starts
    console.print(f"Sweep: {sweep_tables.describe_settings(state)}; backend {state.backend}.")
    try:
        with Live(SweepDisplay(state), console=console, refresh_per_second=2, transient=False):
            sweep.run_sweep(state, root=artifacts, data_dir=data_dir, monitor=_RunLog(), **backend_options)
    finally:
        if not console.is_terminal:
            console.line()  # the last frame of a non-terminal Live ends without one
    rows = sweep_tables.summarize(state)
    print_results(state, rows)
    outputs = sweep_tables.write_outputs(state, rows, artifacts)
    console.print(f"Sweep wall time: {state.finished - state.started:.0f} s.")
    return outputs
