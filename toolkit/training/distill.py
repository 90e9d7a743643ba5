"""Distillation: a student trained on a trained teacher's probabilities plus the labels.

    chain = teachers(spec)                  # checks the names; a teacher that is (a teacher of)
                                            # a student of the spec is a usage error (exit 2)
    info = teacher_record(spec, root)       # the teacher's current run; untrained: exit 4, with
                                            # the command that trains it
    probs = teacher_probabilities(info, images)   # once per teacher model and images (cached)

The teacher's run (spec, run id, model sha256 and its own manifest) enters the student's
manifest, so a retrained teacher means a new student run, never a silently reused one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core import artifacts
from toolkit.core.contract import NUM_CLASSES
from toolkit.core.errors import ArtifactError, UsageError
from toolkit.specs import Spec, get_spec

PREDICT_BATCH = 1000


def teachers(spec: Spec) -> list[Spec]:
    """The spec's teacher, that teacher's teacher, and so on (nearest first). Unknown names and
    cycles (a teacher that is itself a student of the spec) are usage errors."""
    chain: list[Spec] = []
    seen = [spec.name]
    current = spec
    while current.recipe.teacher:
        name = current.recipe.teacher
        try:
            teacher = get_spec(name)
        except UsageError as exc:
            raise UsageError(f"teacher of {current.name}: {exc.message}") from None
        if teacher.name in seen:
            path = " -> ".join([*seen, teacher.name])
            raise UsageError(f"teacher {spec.recipe.teacher!r} of {spec.name} is itself a student of it "
                             f"({path}); allowed: a teacher that does not distil from {spec.name}")
        seen.append(teacher.name)
        chain.append(teacher)
        current = teacher
    return chain


def train_command(name: str, root: Path) -> str:
    return f"toolkit train --exp {name} --artifacts {root}"


def teacher_record(spec: Spec, root: Path | None) -> dict[str, Any] | None:
    """What the student's manifest records of its teacher's current run (None: no teacher)."""
    chain = teachers(spec)
    if not chain:
        return None
    teacher = chain[0]
    arts = artifacts.spec_artifacts(teacher.name, root)
    if not arts.is_trained():
        raise ArtifactError(
            f"{spec.name} distils from {teacher.name}, which has no trained run under {arts.root}; "
            f"train the teacher first: {train_command(teacher.name, arts.root)} "
            f"(or `toolkit run --exp {spec.name}`, which trains it first)"
        )
    metrics = arts.require_trained()
    return {"spec": teacher.name, "run_id": metrics.get("run_id"),
            "model_sha256": artifacts.sha256_file(arts.model),
            "test_accuracy": metrics.get("test_accuracy"), "manifest": metrics.get("manifest")}


def teacher_probabilities(record: dict[str, Any], images: np.ndarray, *, temperature: float,
                          root: Path | None) -> np.ndarray:
    """The teacher's probabilities for `images` (float32 [N,28,28,1]), averaged with those of the
    mirrored images (the student is trained on both orientations), softened by `temperature`.

    Computed once per teacher model and set of images, and kept beside the teacher's run
    (ROOT/TEACHER/distill/), so other seeds, students and resumed runs reuse them."""
    arts = artifacts.spec_artifacts(record["spec"], root)
    if artifacts.sha256_file(arts.model) != record["model_sha256"]:
        raise ArtifactError(f"{arts.model} changed while the student was being prepared; rerun the command")
    images = np.ascontiguousarray(images, dtype=np.float32)
    key = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    cache = arts.distill_dir / f"{record['model_sha256'][:16]}-{key}.npy"
    probs = _cached(cache, len(images))
    if probs is None:
        probs = _predict_both_ways(arts.model, images)
        with artifacts.atomic_path(cache) as tmp:
            np.save(tmp, probs)
    probs = probs.astype(np.float64)
    if temperature != 1.0:
        logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
    return probs.astype(np.float32)


def _cached(path: Path, n: int) -> np.ndarray | None:
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # missing or damaged: computed again, never trusted
    return probs if probs.shape == (n, NUM_CLASSES) and np.isfinite(probs).all() else None


def _predict_both_ways(model_path: Path, images: np.ndarray) -> np.ndarray:
    from toolkit.core.tf import tf
    from toolkit.specs.models import load_model

    model = load_model(model_path, what="teacher model")
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    out = []
    for start in range(0, len(images), PREDICT_BATCH):
        batch = tf.constant(images[start:start + PREDICT_BATCH])
        out.append((call(batch).numpy() + call(tf.reverse(batch, axis=[2])).numpy()) / 2)
    return np.concatenate(out).astype(np.float32)
