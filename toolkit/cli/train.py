"""`toolkit train` and `toolkit run`. `run` hands the pipeline (toolkit.experiments.pipeline, the
ordered list of stages) a PipelinePrinter, which shows each stage as its own command does."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.bench import BenchPrinter, print_report
from toolkit.cli.export import ExportPrinter
from toolkit.cli.loadtest import LoadtestPrinter
from toolkit.cli.options import (
    ArtifactsOption,
    DataDirOption,
    EpochsOption,
    ExpOption,
    LimitOption,
    MixedPrecisionOption,
    RecipeOption,
    ResumeOption,
    SeedOption,
    TeacherOption,
)
from toolkit.cli.output import console, load_data, print_table
from toolkit.specs import DEFAULT_SPEC


def train_cmd(
    exp: ExpOption = DEFAULT_SPEC,
    epochs: EpochsOption = None,
    seed: SeedOption = 0,
    limit_train: LimitOption = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
    resume: ResumeOption = None,
    force: Annotated[bool, typer.Option(help="Retrain even if this run is complete (an interrupted one "
                                             "starts over too).")] = False,
    teacher: TeacherOption = None,
    recipe: RecipeOption = None,
    mixed_precision: MixedPrecisionOption = None,
) -> None:
    """Train one spec on the real data; writes ARTIFACTS/NAME/{model.keras,metrics.json,...}."""
    from toolkit.specs.recipe import parse_overrides
    from toolkit.training.train import TrainRequest, check_resume_precision, train

    request = TrainRequest(exp, seed=seed, epochs=epochs, limit_train=limit_train, root=artifacts,
                           data_dir=data_dir, resume=resume is not False, force=force, teacher=teacher,
                           recipe=parse_overrides(recipe), mixed_precision=mixed_precision)
    if resume:  # asked for outright: the interrupted run must be this precision's
        check_resume_precision(request)
    load_data(data_dir)  # verifies (or downloads) before the model is built
    print_trained(train(request, console=console), artifacts)


def print_trained(result: Any, root: Path | None) -> None:
    """This run's figures beside the seed's, the spread across seeds, the notes, the current run."""
    from toolkit.training import summary

    spec, metrics = result.spec, result.metrics
    if result.reused:
        console.print(f"Reused the completed run {result.run_dir} (same spec, seed, epochs, "
                      "data); pass --force to train it again.")
    rows = [list(r) for r in summary.comparison_rows(metrics, spec)]
    title = (f"{spec.name}: this run vs the seed's reported figures" if spec.reported
             else f"{spec.name}: this run (a new spec: the seed reports no figures for it)")
    print_table(title, ["figure", "this run", "95% interval (Wilson)", "seed"], rows)
    _print_seed_spread(result, root)
    for line in summary.run_notes(metrics):
        console.print(line)
    console.print(f"Current run: {result.run_dir.parent.parent} (run {result.run_dir.name}, "
                  f"{metrics['params']:,} params, mixed precision "
                  f"{metrics.get('mixed_precision', 'off')})")


def _print_seed_spread(result: Any, root: Path | None) -> None:
    """Across seeds, not the test-set interval, is what separates two trainings: say it."""
    from toolkit.core import artifacts
    from toolkit.training import summary

    arts = artifacts.spec_artifacts(result.spec.name, root)
    spread = summary.seed_spread(arts, result.metrics)
    if spread is None or spread.n < 2:
        console.print("Test accuracy across seeds: only this seed of this recipe is complete; train "
                      "others (--seed 1, --seed 2) to see the spread that separates two trainings.")
        return
    console.print(f"Test accuracy across the {spread.n} completed seeds of this recipe: mean "
                  f"{spread.mean:.4f} ± {spread.std:.4f} (sample std), range "
                  f"{spread.low:.4f}-{spread.high:.4f}.")


def run_cmd(
    exp: ExpOption = DEFAULT_SPEC,
    epochs: EpochsOption = None,
    seed: SeedOption = 0,
    limit_train: LimitOption = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
    resume: ResumeOption = None,
    teacher: TeacherOption = None,
    recipe: RecipeOption = None,
    mixed_precision: MixedPrecisionOption = None,
    serve: Annotated[bool, typer.Option("--serve", help="Then serve the pick and load-test it (batching "
                                        "on and off, classify, similar, ceiling; several minutes).")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Also export, check and benchmark the flip test-time-"
                                                    "augmentation variants (rows of their own).")] = False,
) -> None:
    """The whole pipeline for one spec: train (its untrained teachers first, with the same seed,
    epochs and limit), export with parity, benchmark, report (and with --serve, serve and load-test)."""
    from toolkit.experiments.pipeline import RunRequest, run_pipeline
    from toolkit.specs.recipe import parse_overrides
    from toolkit.training.train import TrainRequest

    request = TrainRequest(exp, seed=seed, epochs=epochs, limit_train=limit_train, root=artifacts,
                           data_dir=data_dir, resume=resume is not False, teacher=teacher,
                           recipe=parse_overrides(recipe), mixed_precision=mixed_precision)
    run_pipeline(RunRequest(request, serve=serve, check_resume=bool(resume), tta=tta),
                 PipelinePrinter(artifacts))


class PipelinePrinter(ExportPrinter, BenchPrinter, LoadtestPrinter):
    """Each stage of `toolkit run` under a rule, shown as its own command shows it."""

    def __init__(self, root: Path | None) -> None:
        ExportPrinter.__init__(self, root)

    def stage(self, title: str) -> None:
        console.rule(f"[bold]{title}")

    def training_console(self) -> Any:
        return console

    def load_data(self, data_dir: Path | None) -> None:
        load_data(data_dir)

    def teacher_first(self, student: str, teacher: str) -> None:
        console.print(f"{student} distils from {teacher}, which is not trained yet: training it first.")

    def trained(self, result: Any) -> None:
        print_trained(result, self.root)

    def teacher_minutes(self, minutes: dict[str, float], student: str, student_seconds: float) -> None:
        spent = ", ".join(f"teacher {name} {m:.1f} min" for name, m in minutes.items())
        console.print(f"Training minutes: {spent} (trained first, for this run); student {student} "
                      f"{student_seconds / 60:.1f} min.")

    def reported(self, report: Any, written: list[Path]) -> None:
        print_report(report, written)
