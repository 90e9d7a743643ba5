"""Train one spec on the real data and write its run atomically.

    result = train(TrainRequest("CNN_1L_Dropout_Exp6", seed=0, root=root), console=console)

A run lives in ROOT/NAME/runs/<run-id>/ once complete; while training, per-epoch resume state
sits in ROOT/NAME/runs/.<run-id>.partial/. A run is written to a staging folder and renamed
into place, then (for `toolkit train`) linked in as the spec's current run, so an interrupted
training never touches the previous complete run.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts, data
from toolkit.core.errors import Interrupted, UsageError
from toolkit.core.machine import package_versions
from toolkit.specs import Spec, get_spec, run_variant, with_overrides
from toolkit.training import precision
from toolkit.training.inputs import TRAIN_IMAGES, check_limit_train, make_datasets, split_indices

EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainRequest:
    """One training run as asked for: the spec and what overrides its recipe for this run.

    `teacher` and `recipe` (field: value) change the spec's recipe for this run; such a run gets
    its own run id (a recipe tag), so it never replaces the spec's own run. `mixed_precision`
    (bf16, fp16, off, auto; None: the spec's default) is resolved once, when the run is planned:
    the run id, manifest and metrics name the resolved mode (toolkit.training.precision)."""

    exp: str | Spec
    seed: int = 0
    epochs: int | None = None
    limit_train: int | None = None
    root: Path | None = None
    data_dir: Path | None = None
    # An interrupted run with this manifest is continued from its last completed epoch unless
    # resume is False (`--restart`) or force is set; either way the choice is announced.
    resume: bool = True
    force: bool = False
    teacher: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    mixed_precision: str | None = None
    # False: the test set is never touched (toolkit tune's candidates: a search sees validation
    # figures only); such a run's manifest says so, so a normal run never reuses it.
    evaluate_test: bool = True

    def spec(self) -> Spec:
        """The spec as this run trains it: overrides applied, precision resolved, inputs checked."""
        base = get_spec(self.exp) if isinstance(self.exp, str) else self.exp
        changes = dict(self.recipe)
        given = {k: v for k, v in (("teacher", self.teacher), ("epochs", self.epochs)) if v is not None}
        twice = sorted(set(given) & set(changes))
        if twice:  # one of the two would be dropped without a word
            raise UsageError(f"{', '.join(twice)} given twice (--{twice[0]} and --recipe {twice[0]}=...); "
                             "give it once")
        changes.update(given)
        mode = precision.resolve(self.mixed_precision or base.mixed_precision)
        spec = with_overrides(base, **changes, mixed_precision=mode)
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.limit_train is not None and self.limit_train <= 0:
            raise UsageError(f"--limit-train must be positive, got {self.limit_train}")
        check_limit_train(self.limit_train, fraction=spec.validation_fraction)  # before the run id names it
        return spec


@dataclass(frozen=True)
class TrainResult:
    spec: Spec
    run_dir: Path
    metrics: dict[str, Any]
    reused: bool
    promoted: bool


def train(request: TrainRequest, *, promote: bool = True, on_epoch: EpochHook | None = None,
          console: Any = None) -> TrainResult:
    """Train the requested run (or reuse the completed run with the same manifest).

    `promote` makes the run the spec's current run (what `toolkit train` does); sweeps and
    stability analyses pass False so they never replace another seed's current run. With a rich
    `console`, epochs and steps show as live bars under a header naming the run.
    """
    from toolkit.training import distill

    spec = request.spec()
    teacher_run = distill.teacher_record(spec, request.root)  # a bad or untrained teacher stops us here
    dataset = data.load(request.data_dir)
    arts = artifacts.spec_artifacts(spec.name, request.root)
    manifest = artifacts.make_manifest(
        spec, seed=request.seed, epochs=spec.epochs, limit_train=request.limit_train,
        data_checksums=dataset.checksums, variant=run_variant(spec), teacher=teacher_run,
        mixed_precision=spec.mixed_precision,
    )
    if not request.evaluate_test:
        manifest["test_set"] = "not evaluated"
    rid = manifest["run_id"]
    with artifacts.exclusive_lock(arts.lock_file(rid), what=f"run {spec.name}/{rid}"):
        existing = artifacts.completed_run(arts, manifest)
        reused = existing is not None and not request.force
        _clean_stale_staging(arts, rid)  # we hold the run's lock: no live process writes them
        resume = request.resume and not request.force
        run_dir = existing if reused else _train_new(spec, dataset, arts, manifest, resume=resume,
                                                     on_epoch=on_epoch, console=console)
        if promote:
            artifacts.promote(arts, run_dir)
        metrics = artifacts.read_json(run_dir / "metrics.json", what="metrics")
        return TrainResult(spec, run_dir, metrics, reused=reused, promoted=promote)


def _callbacks(spec: Spec, manifest: dict[str, Any], partial: Path, *, state: tuple, steps: int,
               n_train: int, on_epoch: EpochHook | None, console: Any) -> tuple[list, Any, Any, Any]:
    """(callbacks, checkpoint, best-epoch keeper, display) for model.fit: the best epoch's weights
    are saved before the checkpoint that marks the epoch done."""
    from toolkit.training import fitting
    from toolkit.training.callbacks import EpochHookCallback, PartialCheckpoint, RichProgress

    history, initial_epoch, seconds_before = state
    checkpoint = PartialCheckpoint(partial, manifest, history, seconds_before)
    ema = fitting.EmaSwap() if spec.recipe.ema else None
    best = fitting.BestEpoch(partial, initial_epoch, ema) if spec.recipe.selection == "best" else None
    rate = fitting.StepRate(spec.recipe, steps) if spec.recipe.schedule in ("linear", "onecycle") else None
    # The rate is set before each step; validation swaps the average in and out around itself.
    callbacks: list = [c for c in (rate, ema, best, checkpoint) if c is not None]
    if on_epoch is not None:
        callbacks.append(EpochHookCallback(on_epoch, spec.epochs))
    display = None
    if console is not None:
        header = (f"{spec.name} · seed {manifest['seed']} · {spec.epochs} epochs · batch {spec.batch_size} · "
                  f"{n_train:,} training images · {precision.describe(spec.mixed_precision)}")
        display = RichProgress(spec, steps, initial_epoch, console, header=header, n_train=n_train)
        callbacks.append(display)
    return callbacks, checkpoint, best, display


def _fit(model, spec: Spec, manifest: dict[str, Any], datasets: tuple, *, steps: int, initial_epoch: int,
         callbacks: list, checkpoint, display) -> None:
    """model.fit over the remaining epochs; Ctrl-C commits the epoch being written and says how
    to resume."""
    train_ds, val_ds = datasets
    try:
        if initial_epoch < spec.epochs:
            warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
            model.fit(train_ds, validation_data=val_ds, epochs=spec.epochs, steps_per_epoch=steps,
                      initial_epoch=initial_epoch, verbose=0, callbacks=callbacks)
        checkpoint.finish()
    except KeyboardInterrupt:
        done = checkpoint.finish()  # the epoch being written is committed before we report it
        command = resume_command(spec.name, manifest["seed"], spec.epochs, manifest["limit_train"],
                                 spec.mixed_precision)
        raise Interrupted(
            f"training of {spec.name} interrupted after {done}/{spec.epochs} epochs; the "
            f"previous complete run is untouched. Rerunning the same command continues it (it resumes by "
            f"default), as does: {command}"
        ) from None
    finally:
        if display is not None:
            display.stop()


def _train_new(spec: Spec, dataset: data.Dataset, arts: artifacts.SpecArtifacts, manifest: dict[str, Any], *,
               resume: bool, on_epoch: EpochHook | None, console: Any) -> Path:
    from toolkit.core.tf import keras, tf

    seed, rid, limit_train = manifest["seed"], manifest["run_id"], manifest["limit_train"]
    keras.utils.set_random_seed(seed)
    # Same spec and seed give the same weights run to run on CPU.
    tf.config.experimental.enable_op_determinism()
    partial = arts.partial_dir(rid)
    n_train = len(split_indices(len(dataset.y_train), seed=seed, fraction=spec.validation_fraction,
                                limit_train=limit_train)[0])
    steps = int(np.ceil(n_train / spec.batch_size))
    model, history, initial_epoch, seconds_before = _model_and_state(spec, manifest, partial, resume,
                                                                     steps_per_epoch=steps, console=console)
    if spec.recipe.whiten_stem and not initial_epoch:  # from training images only, never validation's
        from toolkit.training import fitting

        train_idx, _ = split_indices(len(dataset.y_train), seed=seed, fraction=spec.validation_fraction,
                                     limit_train=limit_train)
        fitting.apply_levers(model, spec, data.to_model_input(dataset.x_train[train_idx[:5000]]))
    train_ds, val_ds, n_train, n_val = make_datasets(
        spec, dataset, seed=seed, limit_train=limit_train, initial_epoch=initial_epoch,
        teacher_run=manifest.get("teacher"), root=arts.root)
    callbacks, checkpoint, best, display = _callbacks(
        spec, manifest, partial, state=(history, initial_epoch, seconds_before), steps=steps, n_train=n_train,
        on_epoch=on_epoch, console=console)
    _fit(model, spec, manifest, (train_ds, val_ds), steps=steps, initial_epoch=initial_epoch,
         callbacks=callbacks, checkpoint=checkpoint, display=display)
    if spec.recipe.ema:  # the moving average is the model: validated, kept, saved and exported
        model.optimizer.finalize_variable_values(model.trainable_variables)
    if spec.mixed_precision != "off":  # model.keras and the exports hold the float32 model
        model = precision.float32_copy(
            model, build=lambda: build_training_model(spec, "off", steps_per_epoch=steps))
    # Selection decides on the validation holdout only, before the test set is ever looked at.
    kept = (best.apply(model) if best is not None else None) or spec.epochs
    test = _evaluate(model, spec, dataset) if "test_set" not in manifest else _NOT_EVALUATED
    metrics = _metrics(spec, manifest, test=test, figures=_run_figures(
        spec, checkpoint.history, kept=kept, seconds=checkpoint.seconds, n_train=n_train), counts={
        "resumed_from_epoch": initial_epoch or None, "train_images": n_train, "val_images": n_val,
        "test_images": int(len(dataset.y_test)) if test["top1"] is not None else 0,
        "params": int(model.count_params())}, dataset=dataset)
    return _commit_run(arts, rid, model, checkpoint.history, metrics, partial, top1=test["top1"])


_NOT_EVALUATED: dict[str, Any] = {"accuracy": None, "loss": None, "top1": None}


def _metrics(spec: Spec, manifest: dict[str, Any], *, test: dict[str, Any], figures: dict[str, Any],
             counts: dict[str, Any], dataset: data.Dataset) -> dict[str, Any]:
    """metrics.json. A resumed run restores weights, optimizer state and dropout seed states, and
    sees the same data order, so it continues as an uninterrupted run would (augmentation aside)."""
    return {
        "spec": spec.name, "run_id": manifest["run_id"],
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], **figures,
        "seed": manifest["seed"], "limit_train": manifest["limit_train"], **counts,
        "mflops_per_image": round(spec.mflops_per_image(), 3),
        "data_source": f"{dataset.origin}: {dataset.source}",
        "versions": package_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "manifest": manifest,
    }


def _evaluate(model, spec: Spec, dataset: data.Dataset) -> dict[str, Any]:
    """Test loss and accuracy of the saved (float32) model, and its top-1 per test image, kept
    beside the run so that any two runs or exports can be compared image by image."""
    from toolkit.training import fitting

    x_test = data.to_model_input(dataset.x_test)
    loss, accuracy = model.evaluate(x_test, fitting.eval_targets(spec.recipe, dataset.y_test),
                                    batch_size=1024, verbose=0)
    top1 = np.argmax(model.predict(x_test, batch_size=1024, verbose=0), axis=1).astype(np.uint8)
    return {"loss": float(loss), "accuracy": float(accuracy), "top1": top1}


def _run_figures(spec: Spec, history: dict[str, list[float]], *, kept: int, seconds: float,
                 n_train: int) -> dict[str, Any]:
    """The training figures of the kept epoch, the time and speed, and how the run trained."""
    from toolkit.training import fitting

    figures = fitting.selected_figures(history, kept)
    return {
        "train_accuracy": figures["accuracy"],
        "train_loss": figures["loss"],
        "val_accuracy": figures["val_accuracy"],
        "val_loss": figures["val_loss"],
        "train_seconds": round(seconds, 2),
        # Training and validation images per second over the run's epochs.
        "images_per_second": round(n_train * spec.epochs / seconds, 1),
        # The resolved mode; the test figures are always of the saved float32 model.
        "mixed_precision": spec.mixed_precision,
        "epochs": spec.epochs,
        "selection": spec.recipe.selection,
        "selected_epoch": kept,
    }


def _model_and_state(spec: Spec, manifest: dict[str, Any], partial: Path, resume: bool, *,
                     steps_per_epoch: int, console: Any = None):
    """(model, history, epochs done, seconds so far): a new model, or the last committed epoch of
    the interrupted run (toolkit.checkpoint), restored into a fresh build (so an optimizer's
    weight-decay exclusions and schedule are the recipe's, not a loaded copy's). Whatever happens
    to an interrupted run's state is said, never done silently."""
    from toolkit.training.checkpoint import load_resume, saved_epochs

    state = load_resume(partial, manifest) if resume else None
    if state is None and partial.exists():
        done = saved_epochs(partial)
        why = ("--restart or --force" if not resume else
               "it was made by another manifest or format, or its checkpoint is damaged")
        if done:
            _notice(console, f"{spec.name}/{manifest['run_id']}: discarding the interrupted run's {done} "
                             f"completed epoch(s) in {partial} ({why}); starting over")
        shutil.rmtree(partial)
    model = build_training_model(spec, spec.mixed_precision, steps_per_epoch=steps_per_epoch)
    if state is None:
        return model, {}, 0, 0.0
    _notice(console, f"{spec.name}/{manifest['run_id']}: resuming the interrupted run from epoch "
                     f"{state.epochs_done} of {spec.epochs} ({partial}; --restart starts over)")
    state.snapshot.restore(model)
    return model, state.history, state.epochs_done, state.seconds


def _notice(console: Any, message: str) -> None:
    """What the caller must know before a long training starts: on its console, else a warning."""
    if console is not None:
        console.print(f"[yellow]note:[/] {message}", soft_wrap=True)
    else:
        warnings.warn(message, stacklevel=3)


def _clean_stale_staging(arts: artifacts.SpecArtifacts, rid: str) -> None:
    """Remove staging folders of this run left by a killed process (a run is written to one, then
    renamed; only the holder of the run's lock writes one, and that is us now)."""
    for stale in arts.runs_dir.glob(f".{rid}.staging-*") if arts.runs_dir.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)


def build_training_model(spec: Spec, mode: str, *, steps_per_epoch: int | None = None):
    """The spec's model compiled for training in `mode` (the policy, and the recipe's optimizer
    for it); variables and output stay float32. Training, the profile and the training benchmark
    all build through here. `steps_per_epoch` shapes a scheduled learning rate (default: the
    full training split's, which is what benchmarks and profiles of one step need)."""
    from toolkit.specs.models import build_model
    from toolkit.training import fitting

    steps = steps_per_epoch or int(np.ceil(TRAIN_IMAGES * (1 - spec.validation_fraction) / spec.batch_size))
    with precision.policy_scope(mode):
        built = build_model(spec)
        fitting.apply_levers(built, spec)  # BatchNorm momentum (the whitened stem needs images: _train_new)
        model = fitting.compile_model(built, spec, steps, mode=mode)
    precision.check_float32_contract(model)
    return model


def resume_command(name: str, seed: int, epochs: int, limit_train: int | None, mode: str) -> str:
    """The command that continues this interrupted run."""
    limit = f" --limit-train {limit_train}" if limit_train else ""
    return (f"toolkit train --exp {name} --seed {seed} --epochs {epochs}{limit} "
            f"--mixed-precision {mode} --resume")


def check_resume_precision(request: TrainRequest) -> None:
    """`--resume` of a run whose interrupted state was trained in another precision is a
    UsageError naming the command that continues it (a different precision is another run)."""
    spec = get_spec(request.exp) if isinstance(request.exp, str) else request.exp
    mode = precision.resolve(request.mixed_precision or spec.mixed_precision)
    seed, limit_train, epochs = request.seed, request.limit_train, request.epochs or spec.epochs
    arts = artifacts.spec_artifacts(spec.name, request.root)
    if (arts.partial_dir(artifacts.run_id(seed, epochs, limit_train, mode)) / "progress.json").is_file():
        return
    for other in precision.RESOLVED:
        rid = artifacts.run_id(seed, epochs, limit_train, other)
        if other != mode and (arts.partial_dir(rid) / "progress.json").is_file():
            raise UsageError(
                f"--resume: the interrupted run {spec.name}/{rid} trained with --mixed-precision {other}, "
                f"not {mode}; a run resumes in its own precision. Continue it with: "
                f"{resume_command(spec.name, seed, epochs, limit_train, other)} (or leave out --resume "
                f"to start a {mode} run)"
            )


def _commit_run(arts, rid, model, history, metrics, partial: Path, *, top1: np.ndarray | None) -> Path:
    """Write the run to a staging folder, then rename it into runs/<run-id>/ in one step."""
    staging = artifacts.make_private_dir(arts.runs_dir, f".{rid}.staging-")
    try:
        model.save(staging / "model.keras")
        artifacts.write_json(staging / "history.json", history)
        if top1 is not None:
            metrics["test_predictions"] = artifacts.save_predictions(
                staging / artifacts.PREDICTIONS_FILE, top1)
        artifacts.write_json(staging / "metrics.json", metrics)
        final = arts.run_dir(rid)
        if final.exists():
            old = final.with_name(f".{rid}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    return final
