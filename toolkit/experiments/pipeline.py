"""`toolkit run`: the whole pipeline for one spec, as one explicit, ordered list of stages.

    STAGES = train -> export -> bench -> report [-> serve+loadtest, with --serve]

    run_pipeline(RunRequest(TrainRequest("CNN_1L_Dropout_Exp6", root=root)), view)

Each stage calls the library (toolkit.training, toolkit.export.run, toolkit.benchmark.driver,
toolkit.report.build, toolkit.experiments.serving) and hands what it got to the caller's
`PipelineView`, which shows it (the CLI prints what the stage's own command prints). A stage
that fails stops the pipeline with its error; the stages before it keep what they wrote. Nothing
registers itself here: a new stage is one entry in STAGES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from toolkit.benchmark.driver import BenchOutcome, BenchRequest, BenchView, measure
from toolkit.benchmark.plan import CLI_REPEATS
from toolkit.core import artifacts
from toolkit.experiments.serving import ServingView, serve_and_loadtest
from toolkit.export.run import ExportRequest, ExportView, export_and_check
from toolkit.specs import get_spec, with_overrides
from toolkit.training import precision
from toolkit.training.distill import teachers
from toolkit.training.train import TrainRequest, TrainResult, check_resume_precision, train


@dataclass(frozen=True)
class RunRequest:
    """The spec and its training options (its untrained teachers train first, with the same seed,
    epochs and limit), and whether to serve and load-test the pick at the end."""

    train: TrainRequest
    serve: bool = False
    check_resume: bool = False  # --resume given outright: the interrupted run must be in this precision
    tta: bool = False  # also export the flip test-time-augmentation variants (their own rows)

    @property
    def exp(self) -> str:
        return self.train.exp if isinstance(self.train.exp, str) else self.train.exp.name


class PipelineView(ExportView, BenchView, ServingView, Protocol):
    """What the caller shows of each stage."""

    def stage(self, title: str) -> None: ...

    def training_console(self) -> Any: ...

    def load_data(self, data_dir: Path | None) -> None: ...

    def teacher_first(self, student: str, teacher: str) -> None: ...

    def trained(self, result: TrainResult) -> None: ...

    def teacher_minutes(self, minutes: dict[str, float], student: str, student_seconds: float) -> None: ...

    def benchmarked(self, outcome: BenchOutcome) -> None: ...

    def reported(self, report: Any, written: list[Path]) -> None: ...


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunRequest, PipelineView], None]
    what: str
    flag: str | None = None  # runs only when this RunRequest field is true


def _train(request: RunRequest, view: PipelineView) -> None:
    minutes = _train_teachers_first(request, view)
    view.stage(f"train {request.exp}")
    result = _train_one(request.train, view, check_resume=request.check_resume)
    if minutes:
        view.teacher_minutes(minutes, request.exp, result.metrics["train_seconds"])


def _train_teachers_first(request: RunRequest, view: PipelineView) -> dict[str, float]:
    """Train the spec's untrained teachers (deepest first); their training minutes by name."""
    req = request.train
    spec = with_overrides(get_spec(request.exp), **{**req.recipe, "teacher": req.teacher})
    minutes: dict[str, float] = {}
    for needed in reversed(teachers(spec)):
        if artifacts.spec_artifacts(needed.name, req.root).is_trained():
            continue
        view.stage(f"train teacher {needed.name}")
        view.teacher_first(spec.name, needed.name)
        teacher = TrainRequest(needed.name, seed=req.seed, epochs=req.epochs, limit_train=req.limit_train,
                               root=req.root, data_dir=req.data_dir, resume=True)
        minutes[needed.name] = _train_one(teacher, view).metrics["train_seconds"] / 60
    return minutes


def _train_one(request: TrainRequest, view: PipelineView, *, check_resume: bool = False) -> TrainResult:
    if check_resume:
        check_resume_precision(request)
    view.load_data(request.data_dir)  # verifies (or downloads) before the model is built
    result = train(request, console=view.training_console())
    view.trained(result)
    return result


def _export(request: RunRequest, view: PipelineView) -> None:
    export_and_check(ExportRequest(exps=[request.exp], formats=["all"], precisions=["all"], tta=request.tta,
                                   root=request.train.root, data_dir=request.train.data_dir),
                     view).raise_for_failures()


def _bench(request: RunRequest, view: PipelineView) -> None:
    outcome = measure(BenchRequest(root=request.train.root, exps=[request.exp], repeats=CLI_REPEATS,
                                   memory=True), view)
    view.benchmarked(outcome)
    outcome.raise_for_failures()


def _report(request: RunRequest, view: PipelineView) -> None:
    from toolkit.report.build import make_report

    report, written = make_report(request.train.root)
    view.reported(report, written)
    report.raise_for_skipped()


def _serve(request: RunRequest, view: PipelineView) -> None:
    from toolkit.serve.server import require_serving

    require_serving()
    serve_and_loadtest(exp=request.exp, root=request.train.root, data_dir=request.train.data_dir, view=view)


STAGES: tuple[Stage, ...] = (
    Stage("train", _train, "train the spec (its untrained teachers first), or reuse its completed run"),
    Stage("export", _export, "export every format and precision, and prove parity on the 10,000 test images"),
    Stage("bench", _bench, "benchmark every export on every runtime (3 processes per case, memory cases)"),
    Stage("report", _report, "join accuracy, parity and cost over every trained spec; write the pick"),
    Stage("serve+loadtest", _serve, "serve the pick (batching on and off) and load-test it", flag="serve"),
)


def run_pipeline(request: RunRequest, view: PipelineView) -> None:
    """Run every stage of STAGES in order (optional ones when their flag is set)."""
    if request.train.mixed_precision:
        precision.resolve(request.train.mixed_precision)  # a bad mode is one line, before any stage starts
    for stage in STAGES:
        if stage.flag is not None and not getattr(request, stage.flag):
            continue
        if stage.name != "train":  # the train stage names each run it trains
            view.stage(f"{stage.name} {request.exp}")
        stage.run(request, view)
