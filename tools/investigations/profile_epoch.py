"""Profile one training epoch of a spec by category, before and after issue 10, back to back.

    .venv/bin/python tools/investigations/profile_epoch.py                        # Exp6: before vs after
    .venv/bin/python tools/investigations/profile_epoch.py --exp DNN_2L_Dropout_Exp2 --json profile.json
    .venv/bin/python tools/investigations/profile_epoch.py --configs after --limit-train 5000   # a quick look

Configurations (each measured in a fresh process, in the order given):
- before: float32 with the resume checkpoint as e0182dc wrote it (model.save of the whole model
  with its optimizer state to checkpoint.keras, then progress.json, on the training thread);
- after:  the spec's default mixed precision resolved on this machine (or --mixed-precision),
  with the background checkpoint of toolkit.training.checkpoint (only the variable copy is on the
  training thread);
- fp32-bg: float32 with the background checkpoint (what `--mixed-precision off` runs now).

Categories, each timed alone over one epoch's worth of batches after a warm-up:
forward+backward (loss and gradients), optimizer (applying one gradient set per step), input
(the tf.data pipeline alone; fit overlaps it with compute through prefetch), the fit epoch
(all three plus metrics), validation, the checkpoint (training thread and background thread),
the whole epoch as `toolkit train` runs it (fit with validation and the checkpoint callback),
and, once per run, test evaluation and saving model.keras. Timings on a loaded machine are
noisy: compare the two columns (measured back to back), and read the load average printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIGS = ("before", "after", "fp32-bg")
ROWS = [
    ("forward_backward", "forward + backward (loss, gradients)"),
    ("optimizer", "optimizer (Adam update)"),
    ("input", "input pipeline alone (overlapped in fit)"),
    ("fit_train", "fit, training only (all of the above + metrics)"),
    ("validation", "validation (6,000 images)"),
    ("checkpoint_blocking", "checkpoint on the training thread"),
    ("checkpoint_background", "checkpoint off the training thread"),
    ("epoch", "epoch as `toolkit train` runs it"),
    ("evaluation", "test evaluation (10,000 images, once per run)"),
    ("save", "saving model.keras (once per run)"),
]


def _timed(fn) -> list[float]:
    """[wall seconds, CPU seconds of this process (every thread)]. On a loaded machine wall time
    stretches with the competition while CPU time stays near the work done: read both."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return [time.perf_counter() - wall, time.process_time() - cpu]


def _legacy_checkpoint(model, partial: Path, manifest: dict, history: dict) -> None:
    """e0182dc's PartialCheckpoint.on_epoch_end, for the "before" column."""
    from toolkit.core import artifacts

    partial.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_path(partial / "checkpoint.keras") as tmp:
        model.save(tmp)
    artifacts.write_json(partial / "progress.json", {"manifest": manifest, "history": history,
                                                     "epochs_done": 1, "seconds": 0.0})


def profile(config: str, exp: str, limit_train: int | None, after_mode: str | None = None) -> dict:
    """Measure every category for one configuration in this process."""
    import numpy as np

    from toolkit.core import data
    from toolkit.core.tf import keras, tf
    from toolkit.specs import get_spec
    from toolkit.training import inputs, precision, train

    spec = get_spec(exp)
    mode = "off" if config in ("before", "fp32-bg") else precision.resolve(after_mode or spec.mixed_precision)
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    dataset = data.load()
    train_ds, val_ds, n_train, _ = inputs.make_datasets(spec, dataset, seed=0, limit_train=limit_train,
                                                         initial_epoch=0)
    steps = int(np.ceil(n_train / spec.batch_size))
    model = train.build_training_model(spec, mode)
    out: dict = {"config": config, "mixed_precision": mode, "steps": steps, "images": n_train,
                 "batch_size": spec.batch_size}
    out.update(_compute(model, train_ds, val_ds, steps))
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        epoch_end = _checkpointing(config, model, Path(tmp) / "partial", out)
        out["epoch"] = _timed(lambda: model.fit(train_ds, validation_data=val_ds, epochs=1,
                                                steps_per_epoch=steps, verbose=0,
                                                callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=epoch_end)]))
        epoch_end(-1, None)  # waits for the background write (a no-op before)
        saved = model if mode == "off" else precision.float32_copy(
            model, lambda: train.build_training_model(spec, "off"))
        x_test, y_test = data.to_model_input(dataset.x_test), dataset.y_test.astype(np.int32)
        out["evaluation"] = _timed(lambda: saved.evaluate(x_test, y_test, batch_size=1024, verbose=0))
        out["save"] = _timed(lambda: saved.save(Path(tmp) / "model.keras"))
    out["load_avg"] = os.getloadavg()
    return out


def _compute(model, train_ds, val_ds, steps: int) -> dict:
    """forward+backward, optimizer, input, fit and validation, each after a warm-up: the toolkit's
    own profiler (`toolkit profile`), without its input-without-augmentation pass."""
    from toolkit.training.profile import time_steps

    timings = time_steps(model, train_ds, train_ds, val_ds, steps)
    del timings["input_plain"]
    return {category: list(seconds) for category, seconds in timings.items()}


def _checkpointing(config: str, model, partial: Path, out: dict):
    """Time one checkpoint (training thread, background thread) into `out`; return the epoch-end
    callback that checkpoints the same way inside fit (called with epoch -1 it waits for it)."""
    from toolkit.training.checkpoint import CheckpointWriter, Snapshot

    manifest = {"profile": config}
    if config == "before":
        out["checkpoint_blocking"] = _timed(lambda: _legacy_checkpoint(model, partial, manifest, {}))
        out["checkpoint_background"] = [0.0, 0.0]
        return lambda epoch, logs: epoch >= 0 and _legacy_checkpoint(model, partial, manifest, {})
    writer = CheckpointWriter(partial, manifest)
    snap = []
    out["checkpoint_blocking"] = _timed(lambda: snap.append(Snapshot.take(model)))
    out["checkpoint_background"] = _timed(
        lambda: (writer.submit(snap[0], epochs_done=1, history={}, seconds=0.0), writer.wait()))
    out["checkpoint_bytes"] = snap[0].nbytes()

    def epoch_end(epoch, logs):
        if epoch < 0:
            writer.wait()
        else:
            writer.submit(Snapshot.take(model), epochs_done=epoch + 1, history={}, seconds=0.0)

    return epoch_end


def _run_child(config: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--exp", args.exp]
    if args.mixed_precision:
        cmd += ["--mixed-precision", args.mixed_precision]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"profiling {config} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


def render(results: list[dict]) -> str:
    head = ["category"] + [f"{r['config']} ({r['mixed_precision']}) wall s / CPU s" for r in results]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in ROWS:
        cells = [f"{r[key][0]:.2f} / {r[key][1]:.2f}" for r in results]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    first = results[0]
    loads = "; ".join(f"{r['config']}: {' '.join(f'{v:.1f}' for v in r['load_avg'])}" for r in results)
    lines.append(f"\n{first['images']:,} images per epoch in {first['steps']} steps of "
                 f"{first['batch_size']}; load average (1/5/15 min) after each: {loads}")
    if len(results) >= 2:
        wall, cpu = (results[0]["epoch"][i] / results[1]["epoch"][i] for i in (0, 1))
        lines.append(f"epoch speed-up {results[0]['config']} -> {results[1]['config']}: {wall:.2f}x wall, "
                     f"{cpu:.2f}x CPU time")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", default="CNN_1L_Dropout_Exp6")
    parser.add_argument("--configs", default="before,after", help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--limit-train", type=int, default=None, help="a subset, for a quick look")
    parser.add_argument("--mixed-precision", default=None,
                        help="the mode of the 'after' column (default: the spec's recipe, resolved here)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(profile(args.child, args.exp, args.limit_train, args.mixed_precision)))
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    results = []
    for config in configs:
        load = os.getloadavg()[0]
        print(f"profiling {args.exp} {config} (load {load:.1f}) ...", file=sys.stderr, flush=True)
        results.append(_run_child(config, args))
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
