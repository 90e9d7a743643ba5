"""`toolkit tune`: search a space of specs for the best validation accuracy per unit of one cost,
under hard budgets (toolkit.experiments.tune); the front goes to the user spec file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from toolkit.cli.options import (
    ArtifactsOption,
    BoardOption,
    DataDirOption,
    LimitOption,
    MaxFlashKibOption,
    MaxRamKibOption,
    SeedOption,
)
from toolkit.cli.output import console, err_console, print_table


def tune_cmd(
    space: Annotated[Path | None, typer.Option("--space", metavar="FILE",
                                               help="A TOML search space (docs/tune.md). Default: small "
                                                    "BNConv nets.")] = None,
    cost: Annotated[str, typer.Option("--cost", help="The objective against validation accuracy: flash "
                                                     "(int8io file), arena, params, mflops or latency "
                                                     "(int8, batch 1, one thread, measured).")] = "flash",
    board: BoardOption = None,
    max_flash_kib: MaxFlashKibOption = None,
    max_ram_kib: MaxRamKibOption = None,
    max_params: Annotated[int | None, typer.Option("--max-params", help="Budget: parameters.")] = None,
    max_mflops: Annotated[float | None,
                          typer.Option("--max-mflops", help="Budget: MFLOPs per image.")] = None,
    max_int8_ms: Annotated[float | None, typer.Option(
        "--max-int8-ms", help="Budget: the tflite-int8 file's batch-1 p50 on one thread, measured (ms); not "
                              "the report's --max-latency-ms.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Candidates to sample (a resumed search counts "
                                                         "those already finished).")] = 20,
    rungs: Annotated[str, typer.Option("--rungs", help="Epochs of each fidelity, shortest first.")] = "2,6",
    eta: Annotated[int, typer.Option("--eta", help="Promote the top 1/eta of a fidelity to the next.")] = 3,
    seed: SeedOption = 0,
    limit_train: LimitOption = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", metavar="URL", help="An Optuna storage URL (e.g. postgresql://...). Default: a journal "
                                         "file under ARTIFACTS/tune/STUDY/.")] = None,
    study: Annotated[str | None, typer.Option(
        "--study", help="The study's name. Default: derived from the options, so the same command "
                        "resumes.")] = None,
    write: Annotated[bool, typer.Option(
        "--write/--no-write", help="Add the front to the user spec file (--specs, default "
                                   "ARTIFACTS/specs.toml).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    data_dir: DataDirOption = None,
    artifacts: ArtifactsOption = None,
) -> None:
    """Search for the best specs under a budget: validation accuracy against one cost, with Optuna.

    Candidates that cannot fit are judged from the spec alone and never trained; short trainings
    rank the rest and the promising ones are trained longer. Resumable: rerun the same command."""
    from toolkit.core.boards import McuBudget
    from toolkit.experiments import tune, tune_space
    from toolkit.experiments.tune_budget import Budget, get_cost
    from toolkit.specs.registry import spec_file_target

    request = tune.TuneRequest(
        space=tune_space.read_space(space) if space else tune_space.default_space(),
        budget=Budget(McuBudget.of(board, max_flash_kib, max_ram_kib), max_params, max_mflops, max_int8_ms),
        cost=get_cost(cost), root=artifacts, trials=trials, rungs=_rungs(rungs), eta=eta, seed=seed,
        limit_train=limit_train, data_dir=data_dir, storage=storage, study=study)
    tune.check(request)  # an impossible budget stops here, before the storage or any training
    target = spec_file_target()
    if write and target is None:  # pragma: no cover - the boundary always names one for tune
        target = artifacts / "specs.toml"
    if not as_json:
        err_console.print(f"tune: study {request.name} ({request.storage or request.folder}), "
                          f"{escape(request.budget.describe())}, cost {request.cost.name}, fidelities "
                          f"{', '.join(map(str, request.rungs))} epochs", soft_wrap=True)
    result = _search(request, quiet=as_json)
    result["written"] = tune.write_front(target, request, result) if write and result["front"] else []
    result["spec_file"] = str(target) if write else None
    from toolkit.experiments.tune_plot import plot_front

    plot = plot_front(result, request.folder / "front.png")
    result["plot"] = str(plot) if plot else None
    if as_json:
        typer.echo(tune.to_json(result))
        return
    _print(result)


def _search(request: Any, *, quiet: bool) -> dict[str, Any]:
    """The search, with a line per trial (and a live status line on a terminal)."""
    from toolkit.experiments import tune

    if quiet:
        return tune.search(request, checked=True)
    if not err_console.is_terminal:
        return tune.search(request, progress=_progress, checked=True)
    display = TuneDisplay()
    with Live(display, console=err_console, refresh_per_second=2, transient=True):
        return tune.search(request, progress=display, checked=True)


def _rungs(text: str) -> tuple[int, ...]:
    from toolkit.core.errors import UsageError

    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"--rungs takes comma-separated epochs such as 2,6; got {text!r}") from None


class TuneDisplay:
    """The live part of the progress (on a terminal): the job running now and the counts so far;
    each finished trial or promotion is a line above it (`_progress`)."""

    def __init__(self) -> None:
        self.running: dict[str, Any] | None = None
        self.started = 0.0
        self.counts: dict[str, int] = {}
        self.best: float | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] == "start":
            self.running, self.started = event, time.monotonic()
            return
        self.running = None
        if event["event"] in ("trial", "promotion"):
            key = event["state"] if event["event"] == "trial" else f"promotion {event['state']}"
            self.counts[key] = self.counts.get(key, 0) + 1
            if event.get("accuracy") is not None and not event.get("why"):
                self.best = max(self.best or 0.0, event["accuracy"])
        _progress(event)

    def __rich__(self) -> Text:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items())) or "none finished yet"
        best = f"; best feasible val acc {self.best:.4f}" if self.best is not None else ""
        head = Text.assemble(("tune ", "bold"), f"{counts}{best}")
        if self.running:
            run = self.running
            head.append(f"\nrunning: trial {run['trial']} at {run['fidelity']} epochs ({run['spec']}) for "
                        f"{time.monotonic() - self.started:.0f} s", style="yellow")
        return head


def _progress(event: dict[str, Any]) -> None:
    if event["event"] == "start":
        return
    if event["event"] == "rerun":
        err_console.print(f"rerunning trial(s) {', '.join(map(str, event['trials']))}: interrupted before")
        return
    what = "trial" if event["event"] == "trial" else "promoted"
    figures = ""
    if event.get("accuracy") is not None:
        figures = f" val acc {event['accuracy']:.4f} at {event['fidelity']} epochs, cost {event['cost']:.4g}"
    why = f" ({'; '.join(event['why'])})" if event.get("why") else ""
    reused = " (reused)" if event.get("reused") else ""
    err_console.print(f"{what} {event['trial']}: {event['state']}{figures}{reused}{escape(why)}",
                      soft_wrap=True)


def _print(result: dict[str, Any]) -> None:
    rows = [[m["trial"], m["spec"], _acc(m), f"{m['cost']:.4g}", f"{m['params']:,}",
             f"{m['mflops']:.2f}", _kib(m["flash_bytes"], m["flash_bytes_estimate"]),
             _kib(m["arena_bytes"], m["arena_bytes_estimate"]), m["describe"]] for m in result["front"]]
    print_table(f"Pareto front at {result['front_fidelity']} epochs (validation accuracy vs "
                f"{result['cost_label']}; {result['budget']})",
                ["trial", "spec", "val acc [95%]", "cost", "params", "MFLOPs", "int8io file", "arena",
                 "architecture"],
                rows, no_wrap=("spec",))
    rho = result["spearman_rho"]
    console.print(f"{result['trials']} trials: {result['complete']} trained, {result['infeasible']} judged "
                  f"infeasible before training, {result['failed']} failed; {result['feasible']} feasible. "
                  f"Spearman rho (first vs last fidelity, {result['spearman_pairs']} candidates): "
                  f"{'n/a' if rho is None else f'{rho:.3f}'}", soft_wrap=True)
    if result["plot"]:
        console.print(f"plot: {result['plot']}", soft_wrap=True)
    if result["written"]:
        console.print(f"wrote {', '.join(result['written'])} to {result['spec_file']} "
                      "(toolkit --specs FILE run --exp NAME)", soft_wrap=True)


def _acc(member: dict[str, Any]) -> str:
    ci = member.get("val_interval")
    return f"{member['val_accuracy']:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _kib(measured: float | None, estimated: float | None) -> str:
    if measured is not None:
        return f"{measured / 1024:,.1f} KiB"
    return f"~{estimated / 1024:,.1f} KiB" if estimated is not None else "-"
