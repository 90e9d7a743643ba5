"""What a finished run says, for people and for the report: its figures beside the seed's, the
notes a user should read, and the spread of test accuracy across the completed seeds of its
recipe (the one place that reads sibling runs; toolkit.core.stats computes the spread)."""

from __future__ import annotations

from typing import Any

from toolkit.core import artifacts, stats
from toolkit.specs import Spec

# Each accuracy in metrics.json and the count of images it is a fraction of.
ACCURACY_IMAGES = {"test_accuracy": "test_images", "train_accuracy": "train_images",
                   "val_accuracy": "val_images"}


def accuracy_interval(metrics: dict[str, Any], key: str = "test_accuracy"):
    """The 95% interval (toolkit.stats) of an accuracy in `metrics`, or None if unknown."""
    value, n = metrics.get(key), metrics.get(ACCURACY_IMAGES.get(key, ""))
    if value is None or not n:
        return None
    return stats.interval_of_accuracy(float(value), int(n))


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


def seed_spread(arts: artifacts.SpecArtifacts, metrics: dict[str, Any]) -> stats.Spread | None:
    """Test accuracy across the completed runs trained with this run's recipe (every seed),
    as a toolkit.core.stats.Spread, or None without a manifest."""
    manifest = metrics.get("manifest")
    if not isinstance(manifest, dict):
        return None
    values = []
    for rdir in artifacts.sibling_runs(arts, manifest):
        value = artifacts.read_json(rdir / "metrics.json", what="metrics").get("test_accuracy")
        if value is not None:
            values.append(float(value))
    return stats.seed_spread(values)
