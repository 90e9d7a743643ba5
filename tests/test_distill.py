"""Distillation: an untrained teacher stops `train` (exit 4, naming the command), a teacher that is a
student of the spec is a usage error (exit 2), `run` trains the teacher first and reports its
minutes apart, the teacher's run enters the student's manifest, and the soft targets are right."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import specs
from toolkit.cli.app import app
from toolkit.core import artifacts
from toolkit.experiments import pipeline
from toolkit.families.seedarch import SeedArch
from toolkit.specs.recipe import Recipe

runner = CliRunner()
TEACHER, STUDENT = "distill_teacher", "distill_student"
LIMIT = "300"


def _dense(units: int) -> SeedArch:
    return SeedArch(dense_units=(units,), dropout=(0.0,), l2=(0.0,))


@pytest.fixture(scope="module", autouse=True)
def registered():
    quick = dict(epochs=1, batch_size=64)
    added = [
        specs.Spec(name=TEACHER, family="DNN", arch=_dense(64), recipe=Recipe(**quick)),
        specs.Spec(name=STUDENT, family="DNN", arch=_dense(16),
                   recipe=Recipe(teacher=TEACHER, distill_alpha=0.7, distill_temperature=2.0, **quick)),
        specs.Spec(name="cycle_a", family="DNN", arch=_dense(8), recipe=Recipe(teacher="cycle_b", **quick)),
        specs.Spec(name="cycle_b", family="DNN", arch=_dense(8), recipe=Recipe(teacher="cycle_a", **quick)),
    ]
    for spec in added:
        specs.register_spec(spec)
    yield
    for spec in added:
        specs.unregister_spec(spec.name)


def test_a_teacher_that_is_a_student_of_the_spec_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["train", "--exp", "cycle_a", "--artifacts", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "is itself a student of it (cycle_a -> cycle_b -> cycle_a)" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "cycle_a").exists()
    result = runner.invoke(app, ["train", "--exp", TEACHER, "--teacher", STUDENT,
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 2 and f"is itself a student of it ({TEACHER} -> {STUDENT} -> {TEACHER})" in (
        result.output.replace("\n", ""))


def test_train_with_an_untrained_teacher_exits_4_naming_the_command(tmp_path):
    result = runner.invoke(app, ["train", "--exp", STUDENT, "--limit-train", LIMIT,
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 4, result.output
    text = result.output.replace("\n", "")
    assert f"toolkit train --exp {TEACHER} --artifacts {tmp_path.resolve()}" in text
    assert not (tmp_path / STUDENT).exists()


@pytest.mark.slow
def test_run_trains_the_teacher_first_and_the_student_records_it(tmp_path, monkeypatch):
    # This test is about training; the other stages have their own.
    monkeypatch.setattr(pipeline, "STAGES", pipeline.STAGES[:1])
    root = str(tmp_path)
    result = runner.invoke(app, ["run", "--exp", STUDENT, "--limit-train", LIMIT, "--artifacts", root])
    assert result.exit_code == 0, result.output
    out = result.output.replace("\n", " ")
    assert f"{STUDENT} distils from {TEACHER}, which is not trained yet: training it first" in out
    assert f"Training minutes: teacher {TEACHER}" in out and f"student {STUDENT}" in out
    teacher = artifacts.spec_artifacts(TEACHER, tmp_path)
    student = json.loads((tmp_path / STUDENT / "metrics.json").read_text())
    recorded = student["manifest"]["teacher"]
    assert recorded["spec"] == TEACHER and recorded["run_id"] == f"seed0-e1-n{LIMIT}"
    assert recorded["model_sha256"] == artifacts.sha256_file(teacher.model)
    assert recorded["manifest"] == json.loads(teacher.metrics.read_text())["manifest"]
    assert student["manifest"]["spec"]["teacher"] == TEACHER

    again = runner.invoke(app, ["train", "--exp", STUDENT, "--limit-train", LIMIT, "--artifacts", root])
    assert again.exit_code == 0 and "Reused the completed run" in again.output
    # A retrained teacher is another teacher: the student is trained again, not reused.
    runner.invoke(app, ["train", "--exp", TEACHER, "--limit-train", LIMIT, "--force", "--artifacts", root])
    fresh = runner.invoke(app, ["train", "--exp", STUDENT, "--limit-train", LIMIT, "--artifacts", root])
    assert fresh.exit_code == 0 and "Reused the completed run" not in fresh.output


@pytest.mark.slow
def test_soft_targets_are_the_teachers_flip_averaged_tempered_probabilities(tmp_path, dataset, monkeypatch):
    from toolkit.core.data import to_model_input
    from toolkit.specs.models import load_model
    from toolkit.training import distill, train

    train.train(train.TrainRequest(TEACHER, limit_train=int(LIMIT), root=tmp_path))
    record = distill.teacher_record(specs.get_spec(STUDENT), tmp_path)
    images = to_model_input(dataset.x_train[:50])
    got = distill.teacher_probabilities(record, images, temperature=2.0, root=tmp_path)
    model = load_model(artifacts.spec_artifacts(TEACHER, tmp_path).model)
    mean = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    tempered = np.exp(np.log(mean) / 2.0)
    np.testing.assert_allclose(got, tempered / tempered.sum(1, keepdims=True), atol=1e-5)
    assert got.max(1).mean() < mean.max(1).mean()  # a temperature above 1 softens
    # Kept beside the teacher's run: a second student (or seed, or resume) does not predict again.
    (cached,) = artifacts.spec_artifacts(TEACHER, tmp_path).distill_dir.glob("*.npy")
    assert cached.name.startswith(record["model_sha256"][:16])

    def no_model(*args, **kwargs):
        raise AssertionError("the cached probabilities were not used")

    monkeypatch.setattr(distill, "_predict_both_ways", no_model)
    again = distill.teacher_probabilities(record, images, temperature=2.0, root=tmp_path)
    np.testing.assert_array_equal(again, got)
