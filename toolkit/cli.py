"""The `toolkit` command line: thin Typer commands over library functions.

This is the only place that catches ToolkitError: each command runs inside `_boundary`, which
turns an error into one line on stderr and its exit code (a traceback only with --verbose).
Errors of the option parser itself (an unknown option, a bad value) get the same one line, with
exit code 2, from `_OneLineErrors`, the app's command group.
Heavy libraries (TensorFlow, ONNX Runtime) are imported inside commands, never at start-up.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

# Before TensorFlow is ever imported: its C++ start-up chatter drowns the useful output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from toolkit.errors import ToolkitError  # noqa: E402

try:  # Typer 0.2x vendors Click as typer._click; older Typers run on Click itself
    from typer._click import exceptions as click_errors  # noqa: E402
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_errors  # noqa: E402

# Wide enough for the tables when piped or captured (rich would fall back to 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    # Messages are plain text: "[ray]" in "pip install '.[ray]'" is not rich markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


class _OneLineErrors(TyperGroup):
    """Usage errors of the option parser (unknown option, bad or missing value) as one line,
    `error: ...`, exit 2, like every other error of the CLI, instead of Click's boxed block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `toolkit` alone: the help, as before
                return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else "toolkit"
            print_error(f"{exc.format_message().rstrip('.')}. See '{command} --help'")
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        # Without standalone mode, Click returns the exit code of typer.Exit (our commands
        # return None when they complete).
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="toolkit",
    cls=_OneLineErrors,
    help="Train Fashion-MNIST classifiers from the seed's specs, export, verify and benchmark them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state: dict[str, Any] = {"verbose": False}

# Options shared by many commands, one definition each.
ExpOption = Annotated[str, typer.Option("--exp", help="Experiment spec name (see `toolkit list`).")]
ExpsOption = Annotated[
    list[str] | None,
    typer.Option("--exp", help="Spec name or glob; repeat for several. Default: all trained."),
]
ArtifactsOption = Annotated[
    Path | None,
    typer.Option("--artifacts", help="Artifacts root (env TOOLKIT_ARTIFACTS; default ./artifacts)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder with the four IDX files (env TOOLKIT_DATA_DIR)."),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for split, init and shuffling.")]
EpochsOption = Annotated[
    int | None, typer.Option("--epochs", help="Override the spec's epochs (20).", min=1)
]
LimitOption = Annotated[
    int | None,
    typer.Option("--limit-train", help="Train on a seeded subset of N images (quick runs).", min=10),
]
MixedPrecisionOption = Annotated[
    str | None,
    typer.Option("--mixed-precision", metavar="bf16|fp16|off|auto",
                 help="Training arithmetic: bf16 or fp16 compute with float32 variables, off (float32, "
                      "the exact recipe) or auto (the fastest this machine has). Default: the spec's "
                      "recipe."),
]


def _boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToolkitError as exc:
            if _state["verbose"]:
                err_console.print_exception()
            print_error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted:[/] nothing half-written was left behind")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:
            if _state["verbose"]:
                raise
            err_console.print(
                f"[bold red]unexpected error:[/] {type(exc).__name__}: {escape(str(exc))}. "
                "Rerun with --verbose for the traceback and report it.", soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command` with the error boundary applied; every command registers through this."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        app.command(*args, **kwargs)(_boundary(fn))
        return fn

    return register


@app.callback()
def _global(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
) -> None:
    _state["verbose"] = verbose or bool(os.environ.get("TOOLKIT_VERBOSE"))
    if _state["verbose"]:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
        os.environ["TOOLKIT_VERBOSE"] = "1"


def print_table(title: str, columns: list[str], rows: list[list[Any]], *, no_wrap: tuple[str, ...] = (),
                **kwargs: Any) -> None:
    """A rich table; the columns named in `no_wrap` keep each cell on one line (others fold)."""
    table = Table(title=title, **kwargs)
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col in no_wrap)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    console.print(table)


# ---------------------------------------------------------------- list / data


@command("list")
def list_specs(
    family: Annotated[str | None, typer.Option(help="Only the specs of this family (one group).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every spec as JSON, for scripts.")] = False,
) -> None:
    """List the experiment specs by family: the study's 17 and the new ones, with architecture,
    recipe, parameters and MFLOPs per image (counted from the spec; no TensorFlow)."""
    import json

    from toolkit.families import FAMILIES, get_family
    from toolkit.specs import SPECS

    chosen = get_family(family).name if family else None
    specs = [s for s in SPECS.values() if chosen in (None, s.family)]
    if as_json:
        typer.echo(json.dumps([_spec_json(s) for s in specs], indent=2))
        return
    table = Table(title="Experiment specs by family (study: the seed's Tables 2 and 3, OCR readings in "
                        "toolkit/specs.py; new: added since)")
    for col in ("spec", "family", "origin", "architecture", "recipe", "epochs", "batch", "params", "MFLOPs",
                "seed test acc"):
        table.add_column(col, overflow="fold")
    for name in FAMILIES:
        group = [s for s in specs if s.family == name]
        if table.rows and group:
            table.add_section()
        for spec in group:
            table.add_row(spec.name, spec.family, spec.origin, spec.describe(), spec.recipe.describe(),
                          str(spec.epochs), str(spec.batch_size), f"{spec.param_count():,}",
                          f"{spec.mflops_per_image():.2f}",
                          f"{spec.reported.test_accuracy:.4f}" if spec.reported else "-")
    console.print(table)


def _spec_json(spec) -> dict[str, Any]:
    return {"name": spec.name, "family": spec.family, "origin": spec.origin,
            "params": spec.param_count(), "mflops_per_image": round(spec.mflops_per_image(), 4),
            "embedding_size": spec.embedding_size(), "architecture": spec.family_entry.summary(spec.arch),
            "recipe": spec.recipe.manifest_fields(),
            "seed_test_accuracy": spec.reported.test_accuracy if spec.reported else None}


@command("data")
def data_info(data_dir: DataDirOption = None) -> None:
    """Show where Fashion-MNIST was found, that it verified, and per-class counts."""
    from toolkit import CLASS_NAMES, data

    dataset = _load_data(data_dir)
    for warning in dataset.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"Fashion-MNIST found at [bold]{dataset.source}[/] ({dataset.origin}); "
                  "all four files verified (IDX magic, dimensions, counts, SHA-256).")
    train_counts = data.class_counts(dataset.y_train)
    test_counts = data.class_counts(dataset.y_test)
    rows = [[i, name, train_counts[i], test_counts[i]] for i, name in enumerate(CLASS_NAMES)]
    rows.append(["", "total", sum(train_counts), sum(test_counts)])
    print_table("Images per class", ["label", "class", "train", "test"], rows)


def _load_data(data_dir: Path | None):
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from toolkit import data

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def report(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"downloading {name}", total=total or None)
            progress.update(tasks[name], completed=done)

        return data.load(data_dir, progress=report)


# ---------------------------------------------------------------- train / run


TeacherOption = Annotated[
    str | None,
    typer.Option("--teacher", help="Distil from this trained spec's probabilities (overrides the recipe's)."),
]
RecipeOption = Annotated[
    list[str] | None,
    typer.Option("--recipe", help="Change a recipe field for this run, FIELD=VALUE (repeatable), "
                                  "e.g. --recipe optimizer=sgd --recipe learning_rate=0.1 (fields: "
                                  "toolkit/recipe.py)."),
]


@command("train")
def train_cmd(
    exp: ExpOption = "CNN_1L_Dropout_Exp6",
    epochs: EpochsOption = None,
    seed: SeedOption = 0,
    limit_train: LimitOption = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last completed epoch.")] = False,
    force: Annotated[bool, typer.Option(help="Retrain even if this run is complete.")] = False,
    teacher: TeacherOption = None,
    recipe: RecipeOption = None,
    mixed_precision: MixedPrecisionOption = None,
) -> None:
    """Train one spec on the real data; writes ARTIFACTS/NAME/{model.keras,metrics.json,...}."""
    from toolkit.recipe import parse_overrides

    _train_and_report(exp=exp, epochs=epochs, seed=seed, limit_train=limit_train, artifacts=artifacts,
                      data_dir=data_dir, resume=resume, force=force, teacher=teacher,
                      recipe=parse_overrides(recipe), mixed_precision=mixed_precision)


def _train_and_report(**kwargs: Any) -> dict[str, Any]:
    from toolkit import specs, train

    spec = specs.get_spec(kwargs.pop("exp"))
    data_dir = kwargs.pop("data_dir")
    if kwargs["resume"]:
        train.check_resume_precision(spec, seed=kwargs["seed"], epochs=kwargs["epochs"],
                                     limit_train=kwargs["limit_train"],
                                     mixed_precision=kwargs.get("mixed_precision"), root=kwargs["artifacts"])
    _load_data(data_dir)  # verifies (or downloads) before the model is built
    root = kwargs.pop("artifacts")
    result = train.train(spec, data_dir=data_dir, root=root, progress=True, console=console, **kwargs)
    if result.reused:
        console.print(f"Reused the completed run {result.run_dir} (same spec, seed, epochs, "
                      "data); pass --force to train it again.")
    rows = [list(r) for r in train.comparison_rows(result.metrics, spec)]
    title = (f"{spec.name}: this run vs the seed's reported figures" if spec.reported
             else f"{spec.name}: this run (a new spec: the seed reports no figures for it)")
    print_table(title, ["figure", "this run", "95% interval (Wilson)", "seed"], rows)
    _print_seed_spread(spec.name, root, result.metrics)
    for line in train.run_notes(result.metrics):
        console.print(line)
    console.print(f"Current run: {result.run_dir.parent.parent} (run {result.run_dir.name}, "
                  f"{result.metrics['params']:,} params, mixed precision "
                  f"{result.metrics.get('mixed_precision', 'off')})")
    return result.metrics


def _print_seed_spread(name: str, root: Path | None, metrics: dict[str, Any]) -> None:
    """Across seeds, not the test-set interval, is what separates two trainings: say it."""
    from toolkit import artifacts, train

    spread = train.seed_spread(artifacts.spec_artifacts(name, root), metrics)
    if spread is None or spread.n < 2:
        console.print("Test accuracy across seeds: only this seed of this recipe is complete; train "
                      "others (--seed 1, --seed 2) to see the spread that separates two trainings.")
        return
    console.print(f"Test accuracy across the {spread.n} completed seeds of this recipe: mean "
                  f"{spread.mean:.4f} ± {spread.std:.4f} (sample std), range "
                  f"{spread.low:.4f}-{spread.high:.4f}.")


# Stages of `toolkit run`, in order. Later features append theirs: (name, fn(exp, root, opts)).
RUN_STAGES: list[tuple[str, Callable[..., None]]] = []
# Stages that run only when their flag is given, after RUN_STAGES: (flag, name, fn).
OPTIONAL_RUN_STAGES: list[tuple[str, str, Callable[..., Any]]] = []


@command("run")
def run_cmd(
    exp: ExpOption = "CNN_1L_Dropout_Exp6",
    epochs: EpochsOption = None,
    seed: SeedOption = 0,
    limit_train: LimitOption = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted training.")] = False,
    teacher: TeacherOption = None,
    recipe: RecipeOption = None,
    mixed_precision: MixedPrecisionOption = None,
    serve: Annotated[bool, typer.Option("--serve", help="Then serve the pick and load-test it (batching "
                                        "on and off, classify, similar, ceiling; several minutes).")] = False,
) -> None:
    """The whole pipeline for one spec: train (its untrained teachers first, with the same seed,
    epochs and limit), then every later stage."""
    from toolkit.recipe import parse_overrides

    if mixed_precision:
        from toolkit import precision

        precision.resolve(mixed_precision)  # a bad mode is one line, before any stage starts
    overrides = parse_overrides(recipe)
    common = dict(epochs=epochs, seed=seed, limit_train=limit_train, artifacts=artifacts, data_dir=data_dir)
    minutes = _train_teachers_first(exp, teacher=teacher, recipe=overrides, **common)
    console.rule(f"[bold]train {exp}")
    metrics = _train_and_report(exp=exp, resume=resume, force=False, teacher=teacher, recipe=overrides,
                                mixed_precision=mixed_precision, **common)
    if minutes:
        spent = ", ".join(f"teacher {name} {m:.1f} min" for name, m in minutes.items())
        console.print(f"Training minutes: {spent} (trained first, for this run); student {exp} "
                      f"{metrics['train_seconds'] / 60:.1f} min.")
    for name, stage in RUN_STAGES:
        console.rule(f"[bold]{name} {exp}")
        stage(exp=exp, artifacts=artifacts, data_dir=data_dir)
    flags = {"serve": serve}
    for flag, name, stage in OPTIONAL_RUN_STAGES:
        if flags.get(flag):
            console.rule(f"[bold]{name} {exp}")
            stage(exp=exp, artifacts=artifacts, data_dir=data_dir)


def _train_teachers_first(exp: str, *, teacher: str | None, recipe: dict[str, Any],
                          **common: Any) -> dict[str, float]:
    """Train the spec's untrained teachers (deepest first); their training minutes by name."""
    from toolkit import artifacts as arts_mod
    from toolkit import distill, specs

    spec = specs.with_overrides(specs.get_spec(exp), **{**recipe, "teacher": teacher})
    minutes: dict[str, float] = {}
    for needed in reversed(distill.teachers(spec)):
        if arts_mod.spec_artifacts(needed.name, common["artifacts"]).is_trained():
            continue
        console.rule(f"[bold]train teacher {needed.name}")
        console.print(f"{spec.name} distils from {needed.name}, which is not trained yet: training it first.")
        metrics = _train_and_report(exp=needed.name, resume=True, force=False, **common)
        minutes[needed.name] = metrics["train_seconds"] / 60
    return minutes


# Command modules of later features register themselves (commands and run stages) on import,
# in this order, which is also the order of their `toolkit run` stages.
COMMAND_MODULES = ("cli_export", "cli_bench", "cli_analysis", "cli_sweep", "cli_serve")


def _register_command_modules() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"toolkit.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"toolkit.{name}":
                raise


_register_command_modules()


def main() -> None:
    # A kill from a scheduler (SIGTERM) unwinds like Ctrl-C, so temp files are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app(prog_name="toolkit")


if __name__ == "__main__":
    sys.exit(main())
