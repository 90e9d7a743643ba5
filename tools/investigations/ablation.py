"""Issue 21's lever ablation: one lever at a time on top of a base recipe, 3 seeds each, judged on
the validation holdout (the test accuracy every run records is kept in the log, never used to
choose). Runs go to their own artifacts root and are resumable (a finished run is reused, an
interrupted one resumed), so this script can be stopped and restarted.

    .venv/bin/python tools/investigations/ablation.py --root /work/runs/ablation                # brisk
    .venv/bin/python tools/investigations/ablation.py --root R --net swift --levers base,ema --seeds 0,1,2
    .venv/bin/python tools/investigations/ablation.py --root R --table                         # the table

Each line of ROOT/ablation.jsonl is one finished run: net, lever, seed, validation and test
accuracy, training seconds, the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

NETS = {
    # ~3 minutes on 2 cores in bf16 (43.5 MFLOPs, 280 K parameters): the ablation spec.
    "brisk": dict(stem_filters=32, stages=((64, 64), (128, 128)), epochs=10),
    # frontier's net for ~10 minutes (130 MFLOPs, 844 K parameters): where the winners are confirmed.
    "swift": dict(stem_filters=48, stages=((112, 112), (224, 224)), epochs=12),
}
BASE = dict(optimizer="sgd", learning_rate=0.1, weight_decay=5e-4, schedule="cosine", warmup_epochs=1,
            label_smoothing=0.1, crop_padding=2, flip=True, erasing=0.25, batch_size=128, selection="best")
LEVERS = {
    "base": {},
    "ema": dict(ema=0.999),
    "onecycle": dict(schedule="onecycle", warmup_epochs=3),
    "linear": dict(schedule="linear"),
    "no-erasing": dict(erasing=0.0),
    "no-smoothing": dict(label_smoothing=0.0),
    "bn-momentum": dict(bn_momentum=0.9),
    "whiten": dict(whiten_stem=True),
    "batch256": dict(batch_size=256, learning_rate=0.2),
}


def spec_for(net: str, lever: str, extra: dict | None = None):
    from toolkit.specs import get_spec, with_overrides
    from toolkit.specs.spec import Spec

    arch = {k: v for k, v in NETS[net].items() if k != "epochs"}
    changes = {**BASE, **LEVERS.get(lever, {}), **(extra or {}), "epochs": NETS[net]["epochs"], **arch}
    spec = with_overrides(get_spec("frontier"), **changes)
    import dataclasses

    name = f"{net}-{lever}"
    return dataclasses.replace(spec, name=name, origin="new") if isinstance(spec, Spec) else spec


def run(root: Path, net: str, levers: list[str], seeds: list[int]) -> None:
    from toolkit.core.machine import load_average
    from toolkit.training.train import TrainRequest, train

    log = root / "ablation.jsonl"
    done = {(d["net"], d["lever"], d["seed"]) for d in _read(log)}
    for seed in seeds:  # every lever on seed 0 first: a partial table is already a screen
        for lever in levers:
            if (net, lever, seed) in done:
                continue
            spec = spec_for(net, lever)
            before = load_average()
            result = train(TrainRequest(spec, seed=seed, root=root), promote=False)
            m = result.metrics
            row = {"net": net, "lever": lever, "seed": seed, "val_accuracy": m["val_accuracy"],
                   "test_accuracy": m["test_accuracy"], "train_seconds": m["train_seconds"],
                   "selected_epoch": m.get("selected_epoch"), "epochs": m["epochs"],
                   "mixed_precision": m.get("mixed_precision"), "reused": result.reused,
                   "load_before": before, "load_after": load_average(), "run_dir": str(result.run_dir)}
            with open(log, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def _read(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def table(root: Path) -> None:
    import numpy as np

    rows = _read(root / "ablation.jsonl")
    by = {}
    for r in rows:
        by.setdefault((r["net"], r["lever"]), []).append(r)
    print("| net | lever | seeds | val accuracy mean ± sd | 95% t-interval of the mean | vs base (val pp) | "
          "minutes mean (range) | test accuracy mean (recorded, not used to choose) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    from toolkit.core.stats import t_interval

    for (net, lever), group in sorted(by.items(), key=lambda kv: (kv[0][0], list(LEVERS).index(kv[0][1])
                                                                  if kv[0][1] in LEVERS else 99)):
        val = np.array([g["val_accuracy"] for g in group])
        base = np.array([g["val_accuracy"] for g in by.get((net, "base"), [])])
        interval = t_interval(list(val)) if len(val) > 1 else None
        ci = f"{interval.low:.4f}-{interval.high:.4f}" if interval else "-"
        delta = f"{(val.mean() - base.mean()) * 100:+.2f}" if len(base) else "-"
        minutes = np.array([g["train_seconds"] / 60 for g in group])
        sd = f" ± {val.std(ddof=1):.4f}" if len(val) > 1 else ""
        test = np.mean([g["test_accuracy"] for g in group])
        print(f"| {net} | {lever} | {len(group)} | {val.mean():.4f}{sd} | {ci} | {delta} | "
              f"{minutes.mean():.1f} ({minutes.min():.1f}-{minutes.max():.1f}) | {test:.4f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--net", choices=sorted(NETS), default="brisk")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        table(args.root)
        return 0
    unknown = set(args.levers.split(",")) - set(LEVERS)
    if unknown:
        print(f"unknown levers {sorted(unknown)}; known: {', '.join(LEVERS)}", file=sys.stderr)
        return 2
    run(args.root, args.net, args.levers.split(","), [int(s) for s in args.seeds.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
