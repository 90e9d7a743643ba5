"""Runs trained before the restructure are reused, not retrained: what a run's manifest records of
each registered spec (and the run ids) is exactly what the toolkit recorded before the move
(tests/data/spec-manifests-before-restructure.json, written by the flat-layout toolkit of commit
2b34118). A spec whose summary changed on purpose (a new recipe) gets a new run id anyway; this
file changes with it, in the same commit."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.core import artifacts
from toolkit.specs import SPECS

BEFORE = json.loads((Path(__file__).parent / "data" / "spec-manifests-before-restructure.json").read_text())


def test_every_registered_spec_summarises_as_before():
    now = {name: json.loads(json.dumps(spec.summary())) for name, spec in SPECS.items()}
    changed = sorted(n for n in BEFORE["summaries"] if now.get(n) != BEFORE["summaries"][n])
    assert not changed, f"these specs would retrain (their manifests changed): {changed}"


def test_run_ids_and_the_training_recipe_are_unchanged():
    assert BEFORE["training_recipe"] == artifacts.TRAINING_RECIPE
    assert [artifacts.run_id(0, 20), artifacts.run_id(1, 5, 3000), artifacts.run_id(0, 20, None, "bf16"),
            artifacts.run_id(0, 30, None, "off", "r1a2b3c4d")] == BEFORE["run_ids"]
