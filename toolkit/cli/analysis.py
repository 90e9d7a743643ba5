"""`toolkit analyze` and `toolkit recommend`: thin commands over toolkit.experiments.analysis and
toolkit.experiments.stability, and toolkit.recommend (imported inside the commands, so
`toolkit --help` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.options import ArtifactsOption, DataDirOption
from toolkit.cli.output import console, err_console, print_table, steps
from toolkit.core.errors import UsageError
from toolkit.specs import DEFAULT_SPEC


def _f(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- analyze


def analyze_cmd(
    exp: Annotated[list[str] | None, typer.Option(
        "--exp", help=f"Spec to analyse (default {DEFAULT_SPEC}); give twice to compare stability.")] = None,
    seeds: Annotated[int | None, typer.Option(
        "--seeds", help="Train (or reuse) seeds 0..N-1 and report stability over them.", min=2)] = None,
    sample: Annotated[int, typer.Option("--sample", help="Test image for the feature maps.")] = 0,
    tsne_samples: Annotated[int, typer.Option(
        "--tsne-samples", help="Seeded sample of test images for t-SNE.", min=20)] = 2000,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", help="Stability runs: override the spec's epochs (quick checks).", min=1)] = None,
    limit_train: Annotated[int | None, typer.Option(
        "--limit-train", help="Stability runs: train on N images (quick checks).", min=10)] = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """The seed's analyses: curves, per-class table vs Table 5, confusion matrix, t-SNE, feature
    maps; with --seeds, stability over seeds. Writes ARTIFACTS/NAME/analysis/."""
    from toolkit.core.artifacts import spec_artifacts
    from toolkit.experiments import analysis, stability
    from toolkit.specs import get_spec

    names = [get_spec(e).name for e in (exp or [DEFAULT_SPEC])]
    if len(set(names)) != len(names):
        raise UsageError("each --exp must name a different spec")
    if seeds is None and (epochs is not None or limit_train is not None):
        raise UsageError("--epochs/--limit-train apply to stability runs only; add --seeds N")
    for name in names:
        arts = spec_artifacts(name, artifacts)
        if seeds is not None and not arts.is_trained():
            console.print(f"{name}: no current run, so only its stability is analysed "
                          f"(train it with `toolkit train --exp {name}` for the other analyses).")
            continue
        console.rule(f"[bold]analyze {name}")
        with steps(f"analysing {name}") as report:
            result = analysis.analyze(analysis.AnalysisRequest(name, root=artifacts, data_dir=data_dir,
                                                               sample=sample, tsne_samples=tsne_samples),
                                      progress=report)
        _print_analysis(result)
    if seeds is not None:
        results = _run_stability(names, seeds, epochs, limit_train, artifacts, data_dir)
        files = stability.write_stability(results, artifacts)
        _print_stability(results)
        console.print("Wrote " + ", ".join(str(f) for f in files))


def _print_analysis(result) -> None:
    s = result.summary
    has_seed = any(r["seed_table5"] is not None for r in s["per_class"])
    rows = []
    for r in s["per_class"]:
        row = [r["label"], r["class"], r["images"], r["correct"], _f(r["accuracy"]), _f(r["precision"])]
        if has_seed:
            row += [f"{r['seed_table5']:.2f}", f"{r['accuracy'] - r['seed_table5']:+.3f}"]
        rows.append(row)
    columns = ["label", "class", "images", "correct", "accuracy", "precision"]
    if has_seed:
        columns += ["seed Table 5", "difference"]
    print_table(f"{s['spec']}: per-class accuracy on {s['test_images']:,} test images "
                f"(overall {s['test_accuracy']:.4f})", columns, rows)
    print_table(f"Hardest class pairs (hardest class: {s['hardest_class']})",
                ["pair", "A as B", "B as A", "total", "share of errors"],
                [[f"{p['a']} / {p['b']}", p["a_as_b"], p["b_as_a"], p["total"],
                  f"{p['share_of_errors']:.1%}"] for p in s["hardest_pairs"]])
    t = s["tsne"]
    console.print(f"t-SNE on {t['samples']:,} test images: 5-NN class agreement in the 2-D map "
                  f"{t['knn5_agreement_raw']:.1%} for raw pixels, {t['knn5_agreement_embedding']:.1%} "
                  f"for the {t['embedding_dim']}-d penultimate activations.")
    console.print(f"Wrote {len(result.files)} files to {result.files[0].parent} "
                  f"({', '.join(p.name for p in result.files)}) in {s['seconds']:.0f} s.")


def _run_stability(names, seeds, epochs, limit_train, artifacts, data_dir):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from toolkit.experiments import stability

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console) as progress:
        runs = progress.add_task("stability runs", total=len(names) * seeds)
        epoch_task = progress.add_task("  epochs", total=None, visible=False)

        def on_run(spec: str, seed: int, event: str) -> None:
            if event == "start":
                progress.update(runs, description=f"stability runs: {spec} seed {seed}")
                progress.reset(epoch_task, total=None, visible=False)
            else:
                progress.advance(runs)
                if event == "reused":
                    progress.console.print(f"  {spec} seed {seed}: reused the completed run")

        def on_epoch(epoch: int, total: int, logs: dict[str, float]) -> None:
            progress.update(epoch_task, completed=epoch, total=total, visible=True,
                            description=f"  epoch {epoch}/{total} val_acc {logs.get('val_accuracy', 0):.4f}")

        return stability.stability(names, seeds, epochs=epochs, limit_train=limit_train, root=artifacts,
                                  data_dir=data_dir, on_run=on_run, on_epoch=on_epoch)


def _print_stability(results) -> None:
    rows = []
    for res in results:
        st = res.stats()
        t, v = st["test_accuracy"], st["val_accuracy_per_epoch"]
        images = f"{res.limit_train:,}" if res.limit_train else "all"
        rows.append([res.spec, len(res.runs), f"{res.epochs} / {images}",
                     f"{_f(t['mean'])} ± {_f(t['std'])}", f"{_f(t['min'])}-{_f(t['max'])}", _f(t["range"]),
                     f"{_f(v['final_mean'])} ± {_f(v['final_std'])}", _f(v["mean_std_over_epochs"]),
                     _f(v["max_range_over_epochs"]), _f(v["mean_epoch_to_epoch_change"])])
    print_table("Stability over seeds (± is the sample standard deviation over seeds)",
                ["spec", "seeds", "epochs/imgs", "test acc", "test min-max", "test range",
                 "final val acc", "val std (avg)", "val range (max)", "val jitter"], rows)
    console.print("val std (avg): per-epoch std over seeds, averaged over epochs; val range (max): largest "
                  "per-epoch spread; val jitter: mean |change| of a seed's val accuracy between epochs.")
    for res in results:
        values = ", ".join(f"seed {r.seed}: {r.test_accuracy:.4f}" + (" (reused)" if r.reused else "")
                           for r in res.runs)
        console.print(f"{res.spec} test accuracy by seed: {values}")


# ---------------------------------------------------------------- recommend


def recommend_cmd(
    exp: Annotated[str, typer.Option("--exp", help="Spec whose embeddings to use.")] = DEFAULT_SPEC,
    index: Annotated[int | None, typer.Option("--index", help="Query: a test-set image index.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Query: an image file (converted to "
                                                "28x28 grey if needed).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="How many similar items.", min=1)] = 5,
    onnx: Annotated[bool, typer.Option("--onnx", help="Embed with recommend/embedding.onnx on ONNX "
                                       "Runtime (no TensorFlow).")] = False,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="precision@k/mAP on the 10k test "
                                           "set vs a raw-pixel baseline, and queries/s.")] = False,
    catalog_limit: Annotated[int | None, typer.Option(
        "--catalog-limit", help="Catalog = first N training images (quick checks; default all 60,000).",
        min=1)] = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Similar products from the training catalog by penultimate-layer cosine similarity."""
    from toolkit.recommend.evaluation import evaluate as evaluate_recommender
    from toolkit.recommend.search import RecommendRequest, recommend

    if index is None and image is None and not evaluate:
        raise UsageError("give a query (--index I or --image FILE) or --evaluate")
    if index is not None and image is not None:
        raise UsageError("give either --index or --image, not both")
    backend = "onnxruntime" if onnx else "keras"
    if index is not None or image is not None:
        with steps(f"recommend ({backend})") as report:
            request = RecommendRequest(exp, index=index, image=image, k=k, backend=backend, root=artifacts,
                                       data_dir=data_dir, catalog_limit=catalog_limit)
            rec = recommend(request, progress=report)
        _print_recommendation(rec, k)
    if evaluate:
        with steps(f"evaluating ({backend})") as report:
            result = evaluate_recommender(exp, backend=backend, root=artifacts, data_dir=data_dir,
                                          catalog_limit=catalog_limit, progress=report)
        _print_evaluation(result)


def _print_recommendation(rec: Any, k: int) -> None:
    from toolkit import CLASS_NAMES

    for note in rec.notes:
        console.print(f"[yellow]converted:[/] {note}")
    if rec.catalog.built:
        console.print(f"Indexed the catalog ({len(rec.catalog.labels):,} training images) in "
                      f"{rec.catalog.seconds:.1f} s; cached for later queries.")
    query = rec.query
    if rec.query_label is not None:
        query += f" (class {CLASS_NAMES[rec.query_label]})"
    console.print(f"Query: {query}")
    print_table(f"{rec.spec}: top {k} similar catalog items",
                ["rank", "catalog index", "class", "cosine similarity"],
                [[n["rank"], n["index"], n["class"], f"{n['similarity']:.4f}"] for n in rec.neighbours])
    drawn = "" if rec.strip_shows == len(rec.neighbours) else \
        f" (it draws the first {rec.strip_shows} of the {len(rec.neighbours):,} neighbours)"
    console.print(f"Embeddings computed with {rec.backend}; strip: {rec.strip}{drawn}")


def _print_evaluation(result: dict[str, Any]) -> None:
    rows = [[r["embedding"], r["dim"], _f(r["precision@1"]), _f(r["precision@5"]), _f(r["precision@10"]),
             _f(r["mAP@10"]), _f(r["mAP"]), f"{r['batched_qps']:,.0f}"] for r in result["rows"]]
    print_table(f"Retrieval on {result['queries']:,} test queries against {result['catalog_images']:,} "
                "training images (relevant = same class)",
                ["embedding", "dim", "P@1", "P@5", "P@10", "mAP@10", "mAP (full ranking)", "batched q/s"],
                rows)
    ms = result["single_ms"]
    console.print(f"One query at a time (embed + exact top-5): {result['single_qps']:,.1f} queries/s over "
                  f"{result['single_queries']} queries ({ms['embed']:.1f} ms embedding + "
                  f"{ms['search']:.1f} ms search, which scans the whole "
                  f"{result['catalog_images']:,}-item catalog).")
    console.print(result["mAP_definition"] + ".")
    console.print(f"Wrote {result['file']}")
