"""Calibrate `toolkit tune`'s spec-only estimates (toolkit/experiments/tune_estimate.py) against
TFLM-measured files: for each architecture below, build the untrained model (a file's bytes and
its arena do not depend on the weights' values), convert it to tflite-int8io (100 calibration
images), read the file's bytes, measure the arena with TFLM's recording allocator
(toolkit.runtimes.tflm.measure_arena: the smallest arena that works, plus the CMSIS-NN scratch
margin: what McuBudget compares), and print estimate against measurement, the relative errors and
a least-squares fit of the file model's constants.

    PYTHONPATH=. python tools/tune_calibration.py [rows.json]   # about 5 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from toolkit.core import data  # noqa: E402
from toolkit.experiments import tune_estimate  # noqa: E402
from toolkit.families.bnconv import BNConvArch  # noqa: E402
from toolkit.families.mobilenet import MobileNetArch  # noqa: E402
from toolkit.families.resnet import ResNetArch  # noqa: E402
from toolkit.families.seedarch import SeedArch  # noqa: E402
from toolkit.specs import Spec  # noqa: E402

ARCHS = [
    ("BNConv", BNConvArch(stem_filters=8, stem_stride=2, stages=((16,), (32,)))),
    ("BNConv", BNConvArch(stem_filters=16, stem_stride=4, stem_kernel=4, stages=((32,), (64,)))),
    ("BNConv", BNConvArch(stem_filters=24, stem_stride=2, stages=((48, 48), (96,)), downsample="stride")),
    ("BNConv", BNConvArch(stem_filters=16, stem_stride=1, stages=((16,), (32,), (64,)))),
    ("BNConv", BNConvArch(stem_filters=8, stem_stride=1, stages=((8,), (16,)), pooling="flatten")),
    ("BNConv", BNConvArch(stem_filters=32, stem_stride=2, stages=((), (64,)), hidden_units=128,
                          pooling="flatten", dropout=0.3)),
    ("BNConv", BNConvArch(stem_filters=32, stem_stride=2, stages=((64,), (124, 124)))),
    ("BNConv", BNConvArch(stem_filters=16, stem_stride=2, stages=((24, 24), (48, 48), (96,)),
                          hidden_units=64)),
    ("BNConv", BNConvArch(stages=((8,), (16,)))),
    ("BNConv", BNConvArch(stem_filters=24, stem_stride=4, stem_kernel=4, stages=((40,), (80, 80), (160,)),
                          downsample="stride")),
    ("MobileNet", MobileNetArch(blocks=((16, 1), (32, 2), (64, 2)), stem_filters=8, stem_stride=2)),
    ("ResNet", ResNetArch(widths=(8, 16), blocks=(1, 1), stem_filters=8, stem_stride=2)),
    ("DNN", SeedArch(dense_units=(64,), dropout=(0.0,), l2=(0.0,))),
]


def measure(spec: Spec, images: np.ndarray, folder: Path) -> tuple[int, int, int]:
    from toolkit.export.tflite import to_tflite
    from toolkit.runtimes import tflm
    from toolkit.specs.models import build_model

    path = folder / f"{spec.name}.int8io.tflite"
    path.write_bytes(to_tflite(build_model(spec), precision="int8io", calibration=images[:100]))
    arena = tflm.measure_arena(path, images[:16])
    return path.stat().st_size, arena.recommended, arena.minimum


def fit(rows: list[dict]) -> None:
    """The file model's constants (bytes - weights = per channel x channels + per tensor x tensors
    + fixed), fitted on every file, and each file's error when predicted from the other files' fit."""
    a = np.array([[r["channels"], r["tensors"], 1] for r in rows], dtype=float)
    b = np.array([r["flash"] - r["weights"] for r in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    print("file model (per channel, per tensor, fixed):", ", ".join(f"{c:.1f}" for c in coef))
    loo = []
    for k in range(len(rows)):
        keep = np.arange(len(rows)) != k
        others, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
        loo.append((a[k] @ others + rows[k]["weights"]) / rows[k]["flash"] - 1)
    print(f"leave-one-out file errors from {min(loo):+.2%} to {max(loo):+.2%}")


def main() -> int:
    dataset = data.load()
    images = data.to_model_input(dataset.x_train[:200])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (family, arch) in enumerate(ARCHS):
            spec = Spec(name=f"cal{i}", family=family, arch=arch)
            est = tune_estimate.estimate(spec)
            flash, arena, minimum = measure(spec, images, Path(tmp))
            g = tune_estimate.graph_of(spec)
            weighted, tensors = g.weighted, g.tensors
            rows.append(dict(spec=spec.describe(), family=family, params=spec.param_count(),
                             flash=flash, flash_est=est.flash_bytes, arena=arena, arena_est=est.arena_bytes,
                             minimum=minimum, weights=sum(op.weights for op in weighted),
                             channels=sum(op.channels for op in weighted), tensors=tensors, ops=len(g.ops)))
            r = rows[-1]
            print(f"{family:9} {r['params']:>8,} flash {flash:>8,} est {est.flash_bytes:>8,} "
                  f"({est.flash_bytes / flash - 1:+.1%})  arena {arena:>7,} est {est.arena_bytes:>7,} "
                  f"({est.arena_bytes / arena - 1:+.1%})  {r['spec']}", flush=True)
    if len(sys.argv) > 1:  # keep the measurements, to refit without converting again
        Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
    fit(rows)
    for figure in ("flash", "arena"):
        errors = [r[f"{figure}_est"] / r[figure] - 1 for r in rows]
        print(f"{figure}: {len(rows)} files, estimate/measured - 1 from {min(errors):+.2%} "
              f"to {max(errors):+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
