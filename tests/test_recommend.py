"""The recommender on the small real CNN of `trained_root`: self-retrieval, exact search against
a brute-force recomputation, cache invalidation, image conversion, ONNX == Keras, the ONNX path
without TensorFlow, evaluation figures and CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.core import artifacts, data
from toolkit.core.errors import UsageError
from toolkit.core.images import load_image
from toolkit.recommend import catalog as rec_catalog
from toolkit.recommend import embedding, evaluation
from toolkit.recommend import search as rec

CNN = "CNN_1L_Dropout_Exp6"
LIMIT = 2000  # catalog = the first 2,000 real training images
runner = CliRunner()


@pytest.fixture(scope="module")
def keras_catalog(trained_root, dataset):
    embedder = embedding.get_embedder(CNN, backend="keras", root=trained_root)
    return embedder, rec_catalog.load_catalog(CNN, embedder, dataset, root=trained_root, limit=LIMIT)


@pytest.fixture(scope="module")
def onnx_embedder(trained_root):
    return embedding.get_embedder(CNN, backend="onnxruntime", root=trained_root)


def test_items_in_the_catalog_find_themselves_first(keras_catalog, dataset, trained_root):
    embedder, catalog = keras_catalog
    assert catalog.vectors.shape == (LIMIT, 1024)
    assert np.allclose(np.linalg.norm(catalog.vectors, axis=1), 1, atol=2e-3)
    picks = np.random.default_rng(0).choice(LIMIT, 40, replace=False)
    queries = embedder.embed(data.to_model_input(dataset.x_train[picks]))
    idx, sims = rec_catalog.search(catalog.vectors, queries, 3)
    for pick, top, sim in zip(picks, idx[:, 0], sims[:, 0], strict=True):
        # An exact pixel duplicate elsewhere in the catalog may tie; it must be identical then.
        assert top == pick or np.array_equal(dataset.x_train[top], dataset.x_train[pick])
        assert sim == pytest.approx(1.0, abs=2e-3)
    result = rec.recommend(rec.RecommendRequest(CNN, train_index=int(picks[0]), k=4, root=trained_root,
                                                catalog_limit=LIMIT))
    assert result.neighbours[0]["index"] == picks[0] and len(result.neighbours) == 4
    assert [n["similarity"] for n in result.neighbours] == sorted(
        (n["similarity"] for n in result.neighbours), reverse=True)
    assert not result.catalog.built  # the cache from the fixture was reused
    with Image.open(result.strip) as img:
        assert img.size[0] > 4 * img.size[1] * 0.8  # a strip: query + 4 neighbours side by side


def test_search_equals_brute_force_ranking(keras_catalog, dataset):
    embedder, catalog = keras_catalog
    queries = embedder.embed(data.to_model_input(dataset.x_test[:64]))
    idx, sims = rec_catalog.search(catalog.vectors, queries, 10, batch=16)
    full = queries @ catalog.vectors.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    assert np.allclose(sims, np.take_along_axis(full, expected, axis=1), atol=1e-6)
    assert (idx == expected).mean() > 0.99  # only exact float ties may swap
    with pytest.raises(UsageError):
        rec_catalog.search(catalog.vectors, queries, LIMIT + 1)


def test_catalog_cache_follows_the_model(trained_root, dataset, tmp_path):
    from toolkit.specs.models import load_model

    src = artifacts.spec_artifacts(CNN, trained_root)
    arts = artifacts.spec_artifacts(CNN, tmp_path)
    arts.dir.mkdir(parents=True)
    for name in ("model.keras", "metrics.json", "history.json"):
        (arts.dir / name).write_bytes((src.dir / name).read_bytes())
    first = rec_catalog.load_catalog(CNN, embedding.get_embedder(CNN, root=tmp_path), dataset, root=tmp_path,
                                 limit=300)
    again = rec_catalog.load_catalog(CNN, embedding.get_embedder(CNN, root=tmp_path), dataset, root=tmp_path,
                                 limit=300)
    assert first.built and not again.built and np.array_equal(first.vectors, again.vectors)
    meta = json.loads((arts.recommend_dir / "catalog-n300.json").read_text())
    assert meta["source_model_sha256"] == artifacts.sha256_file(arts.model) and meta["dtype"] == "float16"
    assert np.load(arts.recommend_dir / "catalog-n300.npy").dtype == np.float16
    # A different model.keras (perturbed weights) invalidates the cache.
    model = load_model(arts.model)
    model.get_layer("embedding").kernel.assign(model.get_layer("embedding").kernel * 0.5)
    model.save(arts.model)
    changed = rec_catalog.load_catalog(CNN, embedding.get_embedder(CNN, root=tmp_path), dataset,
                                       root=tmp_path, limit=300)
    assert changed.built and changed.info["source_model_sha256"] != meta["source_model_sha256"]
    # A damaged cache is rebuilt, not trusted.
    (arts.recommend_dir / "catalog-n300.npy").write_bytes(b"not numpy")
    assert rec_catalog.load_catalog(CNN, embedding.get_embedder(CNN, root=tmp_path), dataset, root=tmp_path,
                            limit=300).built


def test_onnx_and_keras_paths_agree(keras_catalog, onnx_embedder, trained_root, dataset):
    embedder, catalog = keras_catalog
    assert onnx_embedder.path.name == "embedding.onnx" and onnx_embedder.dim == 1024
    model_path = artifacts.spec_artifacts(CNN, trained_root).model
    assert onnx_embedder.source_sha256 == artifacts.sha256_file(model_path)
    x = data.to_model_input(dataset.x_test[:256])
    assert np.abs(onnx_embedder.embed(x) - embedder.embed(x)).max() < 1e-4
    onnx_catalog = rec_catalog.load_catalog(CNN, onnx_embedder, dataset, root=trained_root, limit=500,
                                        rebuild=True)
    keras_small = rec_catalog.load_catalog(CNN, embedder, dataset, root=trained_root, limit=500, rebuild=True)
    assert onnx_catalog.info["built_with"] == "onnxruntime" and keras_small.info["built_with"] == "keras"
    assert np.abs(onnx_catalog.vectors - keras_small.vectors).max() <= 1e-3  # float16 rounding
    k_idx, k_sims = rec_catalog.search(catalog.vectors, embedder.embed(x[:50]), 5)
    o_idx, o_sims = rec_catalog.search(catalog.vectors, onnx_embedder.embed(x[:50]), 5)
    assert (k_idx == o_idx).all() and np.allclose(k_sims, o_sims, atol=1e-4)
    by_keras = rec.recommend(rec.RecommendRequest(CNN, index=7, k=5, root=trained_root, catalog_limit=LIMIT))
    by_onnx = rec.recommend(rec.RecommendRequest(CNN, index=7, k=5, root=trained_root, catalog_limit=LIMIT,
                                                 backend="onnxruntime"))
    assert [n["index"] for n in by_keras.neighbours] == [n["index"] for n in by_onnx.neighbours]


def _run_without_tf(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)


def test_onnx_path_runs_without_tensorflow(onnx_embedder, keras_catalog, trained_root):
    code = f"""
import json, sys
from pathlib import Path
from toolkit.recommend import search as rec
r = rec.recommend(rec.RecommendRequest({CNN!r}, index=7, k=5, root=Path({str(trained_root)!r}),
                                     catalog_limit={LIMIT}, backend="onnxruntime"))
assert r.backend == "onnxruntime"
from typer.testing import CliRunner
from toolkit.cli.app import app
out = CliRunner().invoke(app, ["recommend", "--exp", {CNN!r}, "--index", "7", "--onnx",
                               "--catalog-limit", "{LIMIT}", "--artifacts", {str(trained_root)!r}])
assert out.exit_code == 0, out.output
print(json.dumps({{"tf": [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx")],
                  "ids": [n["index"] for n in r.neighbours], "cli": out.output}}))
"""
    proc = _run_without_tf(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tf"] == []  # neither TensorFlow nor Keras was imported
    keras_ids = [n["index"] for n in rec.recommend(rec.RecommendRequest(CNN, index=7, k=5, root=trained_root,
                                                   catalog_limit=LIMIT)).neighbours]
    assert result["ids"] == keras_ids
    assert "onnxruntime" in result["cli"] and str(keras_ids[0]) in result["cli"]


def test_image_files_are_converted_and_bad_ones_rejected(trained_root, dataset, tmp_path):
    exact = tmp_path / "test7.png"
    Image.fromarray(dataset.x_test[7]).save(exact)
    from_file = rec.recommend(rec.RecommendRequest(CNN, image=exact, k=5, root=trained_root,
                                                   catalog_limit=LIMIT))
    from_index = rec.recommend(rec.RecommendRequest(CNN, index=7, k=5, root=trained_root,
                                                    catalog_limit=LIMIT))
    assert from_file.notes == []
    assert [n["index"] for n in from_file.neighbours] == [n["index"] for n in from_index.neighbours]

    # A colour photo-like picture: dark product on a white background, 90x60.
    big = np.asarray(Image.fromarray(255 - dataset.x_test[7]).resize((60, 90)))
    colour = tmp_path / "photo.jpg"
    Image.fromarray(np.stack([big, big, big], axis=-1)).save(colour, quality=95)
    pixels, notes = load_image(colour)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    text = " ".join(notes)
    assert "grayscale" in text and "inverted" in text and "resized 60x90 to 19x28" in text
    assert pixels[:, :3].max() < 30  # padded with black, like Fashion-MNIST

    deep = tmp_path / "deep.png"
    Image.fromarray(dataset.x_test[7].astype(np.uint16) * 256).save(deep)
    pixels16, notes16 = load_image(deep)
    assert "to 8-bit" in " ".join(notes16)
    assert np.abs(pixels16.astype(int) - dataset.x_test[7].astype(int)).max() <= 1

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    for path, message in ((broken, "not a readable image"), (tmp_path / "missing.png", "image not found"),
                          (tmp_path, "is a folder, not a file")):
        result = runner.invoke(app, ["recommend", "--exp", CNN, "--image", str(path),
                                     "--artifacts", str(trained_root)])
        assert result.exit_code == 3, result.output
        assert message in result.output and "Traceback" not in result.output


def test_evaluate_figures_match_a_recomputation(keras_catalog, trained_root, dataset):
    from sklearn.metrics import average_precision_score

    embedder, catalog = keras_catalog
    result = evaluation.evaluate(CNN, root=trained_root, catalog_limit=LIMIT, query_limit=300,
                                 single_queries=5)
    model_row, raw_row = result["rows"]
    assert result["queries"] == 300 and result["catalog_images"] == LIMIT
    assert raw_row["embedding"].startswith("raw pixels") and raw_row["dim"] == 784
    q = embedder.embed(data.to_model_input(dataset.x_test[:300]))
    labels, q_labels = catalog.labels, dataset.y_test[:300]
    scores = q @ catalog.vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 5, 10):
        expected = (labels[order[:, :k]] == q_labels[:, None]).mean()
        assert model_row[f"precision@{k}"] == pytest.approx(expected, abs=2e-3)
    ap = [average_precision_score(labels == q_labels[i], scores[i]) for i in range(300)]
    assert model_row["mAP"] == pytest.approx(np.mean(ap), abs=1e-3)
    for row in result["rows"]:
        assert 0 < row["mAP"] <= row["mAP@10"] <= 1 and row["batched_qps"] > 0
    assert result["single_qps"] > 0
    saved = json.loads(Path(result["file"]).read_text())
    assert saved["rows"][0]["precision@5"] == model_row["precision@5"]


@pytest.mark.parametrize("args, code, message", [
    (["--exp", CNN], 2, "give a query"),
    (["--exp", CNN, "--index", "1", "--image", "x.png"], 2, "not both"),
    (["--exp", CNN, "--index", "10000", "--catalog-limit", "100"], 2, "0..9999"),
    (["--exp", CNN, "--index", "1", "-k", "0"], 2, ""),
    (["--exp", "CNN_1L_Dropout_Exp66", "--index", "1"], 2, "unknown experiment spec"),
])
def test_cli_usage_errors(args, code, message, trained_root):
    result = runner.invoke(app, ["recommend", *args, "--artifacts", str(trained_root)])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_untrained_is_an_artifact_error(tmp_path):
    for extra in ([], ["--onnx"]):
        result = runner.invoke(app, ["recommend", "--exp", CNN, "--index", "0", "--artifacts",
                                     str(tmp_path), *extra])
        assert result.exit_code == 4 and "toolkit train --exp" in result.output, result.output


def test_cli_query_prints_table_and_writes_strip(trained_root):
    result = runner.invoke(app, ["recommend", "--exp", CNN, "--index", "0", "-k", "3", "--catalog-limit",
                                 str(LIMIT), "--artifacts", str(trained_root)])
    assert result.exit_code == 0, result.output
    assert "cosine similarity" in result.output and "Ankle boot" in result.output
    assert (artifacts.spec_artifacts(CNN, trained_root).recommend_dir / "strip-test0.png").is_file()


def test_a_large_k_is_listed_in_full_and_drawn_in_part(keras_catalog, trained_root):
    result = rec.recommend(rec.RecommendRequest(CNN, index=3, k=LIMIT, root=trained_root,
                                                catalog_limit=LIMIT))
    assert len(result.neighbours) == LIMIT and result.strip_shows == rec.STRIP_MAX
    with Image.open(result.strip) as img:
        strip_width = img.size[0]
    small = rec.recommend(rec.RecommendRequest(CNN, index=3, k=rec.STRIP_MAX, root=trained_root,
                                               catalog_limit=LIMIT))
    with Image.open(small.strip) as img:
        assert strip_width <= img.size[0] * 1.05  # 2,000 neighbours draw no wider than 20
    cli = runner.invoke(app, ["recommend", "--exp", CNN, "--index", "3", "-k", "30", "--catalog-limit",
                              str(LIMIT), "--artifacts", str(trained_root)])
    assert cli.exit_code == 0, cli.output
    assert "it draws the first 20 of the 30 neighbours" in " ".join(cli.output.split())
