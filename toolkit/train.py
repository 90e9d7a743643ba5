"""Train one spec on the real data and write its run atomically.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, data, precision
from toolkit.contract import package_versions
from toolkit.errors import Interrupted, UsageError
from toolkit.specs import Spec, get_spec, run_variant, with_overrides

EpochHook = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    spec: Spec
    run_dir: Path
    metrics: dict[str, Any]
    reused: bool
    promoted: bool


TRAIN_IMAGES = data.FILES["train_images"].dims[0]  # 60,000: every verified dataset has them all


def check_limit_train(limit_train: int | None, *, fraction: float, n_train: int = TRAIN_IMAGES) -> None:
    """A usage error unless 10 <= limit <= the training images left after the validation holdout
    (54,000 of 60,000 at the seed's 10%): a larger limit would silently shrink the holdout."""
    if limit_train is None:
        return
    if limit_train < 10:
        raise UsageError(f"--limit-train {limit_train} is too small; use at least 10 images")
    available = n_train - int(round(n_train * fraction))
    if limit_train > available:
        raise UsageError(
            f"--limit-train {limit_train:,} is more than the {available:,} training images left after the "
            f"{n_train - available:,}-image validation holdout; use at most {available} (or leave it out "
            "to train on all of them)"
        )


def split_indices(n_train: int, *, seed: int, fraction: float,
                  limit_train: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index split of the training set; a limit shrinks both."""
    check_limit_train(limit_train, fraction=fraction, n_train=n_train)
    order = np.random.default_rng(seed).permutation(n_train)
    n_val = int(round(n_train * fraction))
    if limit_train:
        n_val = max(10, int(round(limit_train * fraction / (1 - fraction))))
    val = order[:n_val]
    train = order[n_val:]
    if limit_train:
        train = train[:limit_train]
    return np.sort(train), np.sort(val)


def train(
    exp: str | Spec,
    *,
    seed: int = 0,
    epochs: int | None = None,
    limit_train: int | None = None,
    root: str | Path | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    promote: bool = True,
    progress: bool = False,
    on_epoch: EpochHook | None = None,
    console=None,
    teacher: str | None = None,
    recipe: dict[str, Any] | None = None,
    mixed_precision: str | None = None,
) -> TrainResult:
    """Train `exp` (or reuse the completed run with the same manifest) and return its metrics.

    `promote` makes the run the spec's current run (what `toolkit train` does); sweeps and
    stability analyses pass False so they never replace another seed's current run. `teacher`
    and `recipe` (field: value) change the spec's recipe for this run; such a run gets its own
    run id (a recipe tag), so it never replaces the spec's own run. `mixed_precision` (bf16,
    fp16, off, auto; None: the spec's default) is resolved here, once: the run id, manifest and
    metrics name the resolved mode (toolkit.precision).
    """
    from toolkit import distill

    spec = get_spec(exp) if isinstance(exp, str) else exp
    changes = dict(recipe or {})
    changes.update({k: v for k, v in (("teacher", teacher), ("epochs", epochs)) if v is not None})
    mode = precision.resolve(mixed_precision or spec.mixed_precision)
    spec = with_overrides(spec, **changes, mixed_precision=mode)
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if limit_train is not None and limit_train <= 0:
        raise UsageError(f"--limit-train must be positive, got {limit_train}")
    check_limit_train(limit_train, fraction=spec.validation_fraction)  # before the run id names it
    teacher_run = distill.teacher_record(spec, root)  # a bad or untrained teacher stops us here
    dataset = data.load(data_dir)
    arts = artifacts.spec_artifacts(spec.name, root)
    manifest = artifacts.make_manifest(
        spec, seed=seed, epochs=spec.epochs, limit_train=limit_train,
        data_checksums=dataset.checksums, variant=run_variant(spec), teacher=teacher_run,
        mixed_precision=mode,
    )
    rid = manifest["run_id"]
    with artifacts.exclusive_lock(arts.lock_file(rid), what=f"run {spec.name}/{rid}"):
        existing = artifacts.completed_run(arts, manifest)
        if existing is not None and not force:
            if promote:
                artifacts.promote(arts, existing)
            metrics = artifacts.read_json(existing / "metrics.json", what="metrics")
            return TrainResult(spec, existing, metrics, reused=True, promoted=promote)
        run_dir = _train_new(spec, dataset, arts, manifest, resume=resume, progress=progress,
                             on_epoch=on_epoch, console=console)
        if promote:
            artifacts.promote(arts, run_dir)
        metrics = artifacts.read_json(run_dir / "metrics.json", what="metrics")
        return TrainResult(spec, run_dir, metrics, reused=False, promoted=promote)


def _make_datasets(spec: Spec, dataset: data.Dataset, *, seed: int, limit_train: int | None,
                   initial_epoch: int, teacher_run: dict[str, Any] | None = None, root=None):
    """Training batches for epochs initial_epoch..epochs-1 as one stream, and validation batches.

    Each epoch's order is a stateless shuffle keyed by (seed, epoch), so a resumed run sees the
    same batches in its later epochs as an uninterrupted one would. Targets and augmentation
    follow the recipe (toolkit.fitting, toolkit.augment).
    """
    from toolkit import augment, fitting
    from toolkit._tf import tf

    train_idx, val_idx = split_indices(
        len(dataset.y_train), seed=seed, fraction=spec.validation_fraction,
        limit_train=limit_train,
    )
    images = data.to_model_input(dataset.x_train[train_idx])
    teacher_probs = None
    if teacher_run is not None:
        from toolkit import distill

        teacher_probs = distill.teacher_probabilities(
            teacher_run, images, temperature=spec.recipe.distill_temperature, root=root)
    x_train = tf.constant(images)
    y_train = tf.constant(fitting.targets(spec.recipe, dataset.y_train[train_idx], teacher_probs))
    x_val = data.to_model_input(dataset.x_train[val_idx])
    y_val = fitting.eval_targets(spec.recipe, dataset.y_train[val_idx])
    n_train = len(train_idx)
    augmenter = augment.batch_augmenter(spec.recipe, seed)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n_train), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(spec.batch_size)
        if augmenter is None:
            return batches.map(lambda idx: (tf.gather(x_train, idx), tf.gather(y_train, idx)))
        return batches.enumerate().map(
            lambda step, idx: (augmenter(tf.gather(x_train, idx), epoch, step), tf.gather(y_train, idx)))

    train_ds = tf.data.Dataset.range(initial_epoch, spec.epochs).flat_map(epoch_batches)
    if spec.augment:
        seed_da = augment.seed_da(seed + 1000 * initial_epoch)
        train_ds = train_ds.map(lambda x, y: (seed_da(x, training=True), y))
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(1024)
    return train_ds, val_ds, n_train, len(y_val)


def _train_new(spec, dataset, arts, manifest, *, resume, progress, on_epoch, console) -> Path:
    from toolkit import fitting
    from toolkit._tf import keras, tf
    from toolkit.callbacks import EpochHookCallback, PartialCheckpoint, RichProgress

    seed, rid, limit_train = manifest["seed"], manifest["run_id"], manifest["limit_train"]
    mode = spec.mixed_precision
    keras.utils.set_random_seed(seed)
    # Same spec and seed give the same weights run to run on CPU.
    tf.config.experimental.enable_op_determinism()
    partial = arts.partial_dir(rid)
    n_train = len(split_indices(len(dataset.y_train), seed=seed, fraction=spec.validation_fraction,
                                limit_train=limit_train)[0])
    steps = int(np.ceil(n_train / spec.batch_size))
    model, history, initial_epoch, seconds_before = _model_and_state(spec, manifest, partial, resume,
                                                                     steps_per_epoch=steps)
    train_ds, val_ds, n_train, n_val = _make_datasets(
        spec, dataset, seed=seed, limit_train=limit_train, initial_epoch=initial_epoch,
        teacher_run=manifest.get("teacher"), root=arts.root)
    checkpoint = PartialCheckpoint(partial, manifest, history, seconds_before)
    best = fitting.BestEpoch(partial, initial_epoch) if spec.recipe.selection == "best" else None
    # The best epoch's weights are saved before the checkpoint that marks the epoch done.
    callbacks: list[keras.callbacks.Callback] = [c for c in (best, checkpoint) if c is not None]
    if on_epoch is not None:
        callbacks.append(EpochHookCallback(on_epoch, spec.epochs))
    display = None
    if progress:
        header = (f"{spec.name} · seed {seed} · {spec.epochs} epochs · batch {spec.batch_size} · "
                  f"{n_train:,} training images · {precision.describe(mode)}")
        display = RichProgress(spec, steps, initial_epoch, console, header=header, n_train=n_train)
        callbacks.append(display)
    try:
        if initial_epoch < spec.epochs:
            warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
            model.fit(train_ds, validation_data=val_ds, epochs=spec.epochs, steps_per_epoch=steps,
                      initial_epoch=initial_epoch, verbose=0, callbacks=callbacks)
        checkpoint.finish()
    except KeyboardInterrupt:
        done = checkpoint.finish()  # the epoch being written is committed before we report it
        raise Interrupted(
            f"training of {spec.name} interrupted after {done}/{spec.epochs} epochs; the "
            f"previous complete run is untouched. Resume with: "
            f"{resume_command(spec.name, seed, spec.epochs, limit_train, mode)}"
        ) from None
    finally:
        if display is not None:
            display.stop()
    if mode != "off":  # model.keras and the exports hold the float32 model, as for float32 runs
        model = precision.float32_copy(
            model, build=lambda: build_training_model(spec, "off", steps_per_epoch=steps))
    history = checkpoint.history
    # Selection decides on the validation holdout only, before the test set is ever looked at.
    kept = (best.apply(model) if best is not None else None) or spec.epochs
    test = _evaluate(model, spec, dataset)
    metrics = {
        "spec": spec.name,
        "run_id": rid,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        **_run_figures(spec, history, kept=kept, seconds=checkpoint.seconds, n_train=n_train),
        "seed": seed,
        "limit_train": limit_train,
        # A resumed run restores weights, optimizer state and dropout seed states, and sees the
        # same data order, so it continues as an uninterrupted run would (augmentation aside).
        "resumed_from_epoch": initial_epoch or None,
        "train_images": n_train,
        "val_images": n_val,
        "test_images": int(len(dataset.y_test)),
        "params": int(model.count_params()),
        "mflops_per_image": round(spec.mflops_per_image(), 3),
        "data_source": f"{dataset.origin}: {dataset.source}",
        "versions": package_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "manifest": manifest,
    }
    return _commit_run(arts, rid, model, history, metrics, partial, top1=test["top1"])


def _evaluate(model, spec: Spec, dataset: data.Dataset) -> dict[str, Any]:
    """Test loss and accuracy of the saved (float32) model, and its top-1 per test image, kept
    beside the run so that any two runs or exports can be compared image by image."""
    from toolkit import fitting

    x_test = data.to_model_input(dataset.x_test)
    loss, accuracy = model.evaluate(x_test, fitting.eval_targets(spec.recipe, dataset.y_test),
                                    batch_size=1024, verbose=0)
    top1 = np.argmax(model.predict(x_test, batch_size=1024, verbose=0), axis=1).astype(np.uint8)
    return {"loss": float(loss), "accuracy": float(accuracy), "top1": top1}


def _run_figures(spec: Spec, history: dict[str, list[float]], *, kept: int, seconds: float,
                 n_train: int) -> dict[str, Any]:
    """The training figures of the kept epoch, the time and speed, and how the run trained."""
    from toolkit import fitting

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
                     steps_per_epoch: int):
    """(model, history, epochs done, seconds so far): a new model, or with --resume the last
    committed epoch of the interrupted run (toolkit.checkpoint), restored into a fresh build (so
    an optimizer's weight-decay exclusions and schedule are the recipe's, not a loaded copy's)."""
    from toolkit.checkpoint import load_resume

    state = load_resume(partial, manifest) if resume else None
    if state is None and partial.exists():
        shutil.rmtree(partial)
    model = build_training_model(spec, spec.mixed_precision, steps_per_epoch=steps_per_epoch)
    if state is None:
        return model, {}, 0, 0.0
    state.snapshot.restore(model)
    return model, state.history, state.epochs_done, state.seconds


def build_training_model(spec: Spec, mode: str, *, steps_per_epoch: int | None = None):
    """The spec's model compiled for training in `mode` (the policy, and the recipe's optimizer
    for it); variables and output stay float32. Training, the profile and the training benchmark
    all build through here. `steps_per_epoch` shapes a scheduled learning rate (default: the
    full training split's, which is what benchmarks and profiles of one step need)."""
    from toolkit import fitting
    from toolkit.models import build_model

    steps = steps_per_epoch or int(np.ceil(TRAIN_IMAGES * (1 - spec.validation_fraction) / spec.batch_size))
    with precision.policy_scope(mode):
        model = fitting.compile_model(build_model(spec), spec, steps, mode=mode)
    precision.check_float32_contract(model)
    return model


def resume_command(name: str, seed: int, epochs: int, limit_train: int | None, mode: str) -> str:
    """The command that continues this interrupted run."""
    limit = f" --limit-train {limit_train}" if limit_train else ""
    return (f"toolkit train --exp {name} --seed {seed} --epochs {epochs}{limit} "
            f"--mixed-precision {mode} --resume")


def check_resume_precision(exp: str | Spec, *, seed: int = 0, epochs: int | None = None,
                           limit_train: int | None = None, mixed_precision: str | None = None,
                           root: str | Path | None = None) -> None:
    """`--resume` of a run whose interrupted state was trained in another precision is a
    UsageError naming the command that continues it (a different precision is another run)."""
    spec = get_spec(exp) if isinstance(exp, str) else exp
    mode = precision.resolve(mixed_precision or spec.mixed_precision)
    epochs = epochs or spec.epochs
    arts = artifacts.spec_artifacts(spec.name, root)
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


def _commit_run(arts, rid, model, history, metrics, partial: Path, *, top1: np.ndarray) -> Path:
    """Write the run to a staging folder, then rename it into runs/<run-id>/ in one step."""
    staging = artifacts.make_private_dir(arts.runs_dir, f".{rid}.staging-")
    try:
        model.save(staging / "model.keras")
        artifacts.write_json(staging / "history.json", history)
        metrics["test_predictions"] = artifacts.save_predictions(staging / artifacts.PREDICTIONS_FILE, top1)
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


# Each accuracy in metrics.json and the count of images it is a fraction of.
ACCURACY_IMAGES = {"test_accuracy": "test_images", "train_accuracy": "train_images",
                   "val_accuracy": "val_images"}


def accuracy_interval(metrics: dict[str, Any], key: str = "test_accuracy"):
    """The 95% interval (toolkit.stats) of an accuracy in `metrics`, or None if unknown."""
    from toolkit.stats import interval_of_accuracy

    value, n = metrics.get(key), metrics.get(ACCURACY_IMAGES.get(key, ""))
    if value is None or not n:
        return None
    return interval_of_accuracy(float(value), int(n))


def comparison_rows(metrics: dict[str, Any], spec: Spec) -> list[tuple[str, str, str, str]]:
    """(figure, this run, its 95% interval, seed's reported) rows for the end-of-training table."""
    reported = spec.reported
    rows = []
    for key in ("test_accuracy", "train_accuracy", "val_accuracy", "train_loss", "val_loss",
                "test_loss", "train_seconds", "images_per_second"):
        ours = metrics.get(key)
        theirs = getattr(reported, key, None) if reported else None
        fmt = {"train_seconds": "{:.2f}", "images_per_second": "{:,.0f}"}.get(key, "{:.4f}")
        interval = accuracy_interval(metrics, key) if key in ACCURACY_IMAGES else None
        ci = f"[{interval.low:.4f}, {interval.high:.4f}]" if interval else ""
        rows.append((key, fmt.format(ours) if ours is not None else "-", ci,
                     fmt.format(theirs) if theirs is not None else "-"))
    return rows


def run_notes(metrics: dict[str, Any]) -> list[str]:
    """What else a user should know about a finished run: the kept epoch, the teacher."""
    notes = []
    if metrics.get("selection") == "best":
        notes.append(f"Kept epoch {metrics['selected_epoch']} of {metrics['epochs']}: the best validation "
                     f"accuracy ({metrics['val_accuracy']:.4f} on the seeded holdout; the test set plays no "
                     "part).")
    teacher = (metrics.get("manifest") or {}).get("teacher")
    if teacher:
        acc = teacher.get("test_accuracy")
        notes.append(f"Distilled from {teacher['spec']} (run {teacher['run_id']}"
                     + (f", test accuracy {acc:.4f})." if acc is not None else ")."))
    return notes


def seed_spread(arts: artifacts.SpecArtifacts, metrics: dict[str, Any]):
    """Test accuracy across the completed runs trained with this run's recipe (every seed),
    as a toolkit.stats.Spread, or None without a manifest."""
    from toolkit.stats import seed_spread as spread

    manifest = metrics.get("manifest")
    if not isinstance(manifest, dict):
        return None
    values = []
    for rdir in artifacts.sibling_runs(arts, manifest):
        value = artifacts.read_json(rdir / "metrics.json", what="metrics").get("test_accuracy")
        if value is not None:
            values.append(float(value))
    return spread(values)
