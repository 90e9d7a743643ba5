"""`toolkit analyze` on the small real models of `trained_root`: the files exist and hold what
they claim (recomputed here from the model and the data), stability reuses runs, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import default_run_id
from PIL import Image
from typer.testing import CliRunner

from toolkit import CLASS_NAMES
from toolkit.cli.app import app
from toolkit.core import artifacts, data
from toolkit.experiments import analysis

CNN, DNN = "CNN_1L_Dropout_Exp6", "DNN_2L_Dropout_Exp2"
runner = CliRunner()


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


@pytest.fixture(scope="module")
def cnn_analysis(trained_root):
    return analysis.analyze(analysis.AnalysisRequest(CNN, root=trained_root, sample=3, tsne_samples=200,
                                                     limit_test=2000, tsne_iter=250))


def test_cnn_analysis_files_hold_what_they_claim(cnn_analysis, trained_root, dataset):
    from toolkit.specs.models import load_model

    out = artifacts.spec_artifacts(CNN, trained_root).analysis_dir
    names = {p.name for p in cnn_analysis.files}
    assert names == {"training_curves.png", "confusion_matrix.png", "tsne.png", "feature_maps.png",
                     "analysis.json", "summary.md"}
    for name in names:
        assert (out / name).is_file()
    for name, (min_w, min_h) in {"training_curves.png": (800, 300), "confusion_matrix.png": (600, 600),
                                 "tsne.png": (1200, 500), "feature_maps.png": (900, 350)}.items():
        w, h = _png_size(out / name)
        assert w >= min_w and h >= min_h, (name, w, h)

    saved = json.loads((out / "analysis.json").read_text())
    cm = np.array(saved["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 2000 == saved["test_images"]
    # Recompute predictions independently and compare every count.
    model = load_model(artifacts.spec_artifacts(CNN, trained_root).model)
    x = data.to_model_input(dataset.x_test[:2000])
    pred = np.asarray(model.predict(x, batch_size=500, verbose=0)).argmax(axis=1)
    truth = dataset.y_test[:2000]
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (truth, pred), 1)
    assert (cm == expected).all()
    assert saved["test_accuracy"] == pytest.approx(float((pred == truth).mean()))
    for row in saved["per_class"]:
        mask = truth == row["label"]
        assert row["class"] == CLASS_NAMES[row["label"]]
        assert row["images"] == int(mask.sum()) and row["correct"] == int((pred[mask] == row["label"]).sum())
        assert row["accuracy"] == pytest.approx(row["correct"] / row["images"])
        assert row["seed_table5"] == analysis.SEED_TABLE5[CNN][row["label"]]
    assert sum(r["correct"] for r in saved["per_class"]) == int(np.trace(cm))
    assert saved["hardest_class"] == min(saved["per_class"], key=lambda r: r["accuracy"])["class"]
    top = saved["hardest_pairs"][0]
    a, b = CLASS_NAMES.index(top["a"]), CLASS_NAMES.index(top["b"])
    off = cm + cm.T
    np.fill_diagonal(off, 0)
    assert top["total"] == off.max() == cm[a, b] + cm[b, a]

    assert saved["tsne"]["samples"] == 200 and 0 <= saved["tsne"]["knn5_agreement_raw"] <= 1
    layers = {layer["name"]: layer["shape"] for layer in saved["sample"]["layers"]}
    assert layers == {"conv_1": [26, 26, 64], "pool_1": [13, 13, 64]}
    assert saved["sample"]["index"] == 3 and saved["sample"]["label"] == CLASS_NAMES[dataset.y_test[3]]

    md = (out / "summary.md").read_text()
    shirt = next(r for r in saved["per_class"] if r["class"] == "Shirt")
    assert f"| Shirt | {shirt['images']} | {shirt['correct']} | {shirt['accuracy']:.4f} |" in md
    assert "0.81" in md and f"{top['a']} / {top['b']}" in md
    history = json.loads(artifacts.spec_artifacts(CNN, trained_root).history.read_text())
    assert f"| 1 | {history['loss'][0]:.4f} |" in md


def test_dnn_analysis_has_activation_scatter(trained_root):
    result = analysis.analyze(analysis.AnalysisRequest(DNN, root=trained_root, sample=0, tsne_samples=150,
                                                       limit_test=1000, tsne_iter=250))
    names = {p.name for p in result.files}
    assert "activation_scatter.png" in names and "feature_maps.png" not in names
    layer = result.summary["sample"]["layers"][0]
    assert layer["name"] == "embedding" and layer["shape"] == [256]
    assert len(set(layer["units"])) == 2 and all(0 <= u < 256 for u in layer["units"])
    assert all(r["seed_table5"] is None for r in result.summary["per_class"])  # not in Table 5
    w, h = _png_size(result.files[0].parent / "activation_scatter.png")
    assert w > 600 and h > 400


def test_cli_stability_compares_two_specs_and_reuses_runs(trained_root, tmp_path):
    # A root holding only the kept seed-0 runs (no current run): stability alone is analysed,
    # seed 0 is reused and seed 1 is trained.
    for name in (DNN, CNN):
        src = artifacts.spec_artifacts(name, trained_root).run_dir(default_run_id(name))
        dst = artifacts.spec_artifacts(name, tmp_path).run_dir(default_run_id(name))
        dst.mkdir(parents=True)
        for f in src.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    args = ["analyze", "--exp", DNN, "--exp", CNN, "--seeds", "2", "--epochs", "1", "--limit-train",
            "3000", "--artifacts", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("reused the completed run") == 2, result.output
    assert "only its stability is analysed" in result.output and "Stability over seeds" in result.output
    trained_root = tmp_path
    out = artifacts.spec_artifacts(DNN, trained_root).analysis_dir
    saved = json.loads((out / f"stability_vs_{CNN}.json").read_text())
    assert saved["compared"] == [DNN, CNN]
    assert _png_size(out / f"stability_vs_{CNN}.png")[0] > 800
    for stats in saved["results"]:
        arts = artifacts.spec_artifacts(stats["spec"], trained_root)
        rids = [default_run_id(stats["spec"], seed=s) for s in (0, 1)]
        accs = [json.loads((arts.run_dir(rid) / "metrics.json").read_text())["test_accuracy"] for rid in rids]
        assert stats["test_accuracy"]["values"] == accs
        assert stats["test_accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert stats["test_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
        assert stats["test_accuracy"]["range"] == pytest.approx(max(accs) - min(accs))
        vals = [json.loads((arts.run_dir(rid) / "history.json").read_text())["val_accuracy"] for rid in rids]
        assert stats["val_accuracy_per_epoch"]["mean"] == pytest.approx(np.mean(vals, axis=0).tolist())
        # Stability runs are never promoted: no current run appeared.
        assert not arts.is_trained() and arts.run_dir(rids[1]).is_dir()
    assert (artifacts.spec_artifacts(CNN, trained_root).analysis_dir / "stability.json").is_file()


@pytest.mark.parametrize("args, code, message", [
    (["--exp", "CNN_9L"], 2, "unknown experiment spec"),
    (["--exp", CNN, "--epochs", "1"], 2, "--seeds"),
    (["--exp", CNN, "--exp", CNN, "--seeds", "2"], 2, "different spec"),
    (["--exp", CNN, "--seeds", "1"], 2, ""),
])
def test_cli_usage_errors(args, code, message, tmp_path):
    result = runner.invoke(app, ["analyze", *args, "--artifacts", str(tmp_path)])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_untrained_and_bad_sample(tmp_path, trained_root):
    result = runner.invoke(app, ["analyze", "--exp", CNN, "--artifacts", str(tmp_path)])
    assert result.exit_code == 4 and "toolkit train --exp CNN_1L_Dropout_Exp6" in result.output
    result = runner.invoke(app, ["analyze", "--exp", DNN, "--sample", "10000",
                                 "--artifacts", str(trained_root)])
    assert result.exit_code == 2 and "0..9999" in result.output
