"""`toolkit serve`, `toolkit loadtest` and the optional serve+loadtest stage of `toolkit run --serve`.

Thin commands over toolkit.serve and toolkit.loadtest (imported inside the commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli import (
    OPTIONAL_RUN_STAGES,
    ArtifactsOption,
    DataDirOption,
    command,
    console,
    err_console,
    print_table,
)
from toolkit.errors import Interrupted, UsageError
from toolkit.specs import DEFAULT_SPEC

MaxBatch = Annotated[
    int, typer.Option("--max-batch", min=1, help="Most images per runtime call (1: no batching).")
]
MaxWait = Annotated[
    float,
    typer.Option(
        "--max-wait-ms", min=0.0, help="How long an idle worker waits for a batch to fill before running it."
    ),
]


SERVING_MODULES = ("fastapi", "uvicorn", "httptools", "python_multipart", "prometheus_client", "httpx")


def require_serving() -> None:
    """One line naming the install command when the `serve` extra is missing."""
    import importlib.util

    missing = [m for m in SERVING_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"serving needs {', '.join(missing)}: pip install -e '.[serve]' (or, on a host "
            "without TensorFlow, pip install -r requirements-serve.txt)"
        )


@command("serve")
def serve_cmd(
    exp: Annotated[str, typer.Option("--exp", help="Spec to serve.")] = DEFAULT_SPEC,
    format: Annotated[
        str | None, typer.Option("--format", help="onnx or tflite (default: the report's pick).")
    ] = None,  # noqa: A002,E501
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, fp16, int8 or dynamic.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_batch: MaxBatch = 64,
    max_wait_ms: MaxWait = 1.0,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue", min=1, help="Queued images per endpoint beyond which requests get 503 at once."
        ),
    ] = 1024,
    inline: Annotated[
        bool,
        typer.Option(
            "--inline/--worker-thread",
            help="Run classify batches on the event loop's thread (one runnable thread fewer) or "
            "on a worker thread; similar batches always run on a worker thread (README: Serving).",
        ),
    ] = True,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Runtime threads per call.")] = 1,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.01, help="Largest request body.")
    ] = 4.0,
    similar: Annotated[
        bool,
        typer.Option(
            "--similar/--no-similar",
            help="Serve /v1/similar (needs recommend/embedding.onnx and the dataset).",
        ),
    ] = True,
    catalog_limit: Annotated[
        int | None,
        typer.Option("--catalog-limit", min=1, help="Catalog = first N training images (quick checks)."),
    ] = None,
    drain_seconds: Annotated[
        float,
        typer.Option(
            "--drain-seconds", min=0.0, help="On Ctrl-C, how long in-flight requests may take to finish."
        ),
    ] = 10.0,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve a spec's export (/v1/classify) and its recommender (/v1/similar) over HTTP; never
    imports TensorFlow. Ctrl-C drains in-flight requests and exits 130."""
    require_serving()
    from toolkit.serve import BatchingSettings, Limits, ServeSettings, build_state, run

    try:
        batching = BatchingSettings(
            max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, inline=inline
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = ServeSettings(
        exp=exp,
        root=artifacts,
        data_dir=data_dir,
        format=format,
        precision=precision,
        host=host,
        port=port,
        threads=threads,
        similar=similar,
        catalog_limit=catalog_limit,
        batching=batching,
        limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024)),
        drain_seconds=drain_seconds,
    )
    from toolkit.cli_analysis import _steps

    with _steps("loading") as report:
        state = build_state(settings, progress=report)
    _print_startup(state, settings)
    try:
        run(
            state,
            settings,
            on_started=lambda url: console.print(
                f"Serving on [bold]{url}[/] (page at {url}/, API docs at {url}/docs); Ctrl-C drains, stops."
            ),
        )
    except Interrupted as exc:  # the expected way a server ends: no "error:" line, exit 130
        console.print(f"Stopped by {exc.message}.")
        raise typer.Exit(exc.exit_code) from None


def _print_startup(state: Any, settings: Any) -> None:
    from toolkit.serve.server import event_loop_name, http_parser_name

    ident = state.classifier.identity
    console.print(
        f"Model: {ident['spec']} {ident['key']} ({ident['file']}, sha256 {ident['sha256'][:12]}) on "
        f"{ident['runtime']} [{ident['provider']}], {ident['threads']} thread(s); parity "
        f"{ident['parity'].get('status', 'unknown')}."
    )
    console.print(f"Chosen as {ident['chosen_by']}.")
    if state.recommender is not None:
        info = state.recommender.info
        built = f", indexed now in {info['catalog_seconds']:.1f} s" if info["built_now"] else " (cached)"
        console.print(
            f"Recommender: {info['items']:,}-item catalog, {info['dim']}-d embeddings from "
            f"{info['embedding_file']}{built}; index built in {info['index_seconds']:.1f} s. "
            f"Search: {info['search']}."
        )
    else:
        console.print("Recommender: off (--no-similar); /v1/similar answers 404.")
    b, lim = settings.batching, settings.limits
    console.print(
        f"Batching: up to {b.max_batch} images per call, {b.max_wait_ms:g} ms max wait, "
        f"classify {'on the event loop' if b.inline else 'on a worker thread'}, similar on a worker "
        "thread, 503 beyond "
        f"{b.max_queue} queued. Limits: body {lim.max_body_bytes:,} bytes, {lim.max_pixels:,} "
        f"decoded pixels, {lim.max_json_images} JSON images, k <= {state.max_k}. "
        f"Stack: uvicorn ({http_parser_name()}, {event_loop_name()})."
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[yellow]warning:[/] listening on {settings.host}: reachable from other machines; "
            "this server has no authentication."
        )


# ---------------------------------------------------------------- loadtest


@command("loadtest")
def loadtest_cmd(
    url: Annotated[
        str, typer.Option("--url", help="The server (loopback unless --allow-remote).")
    ] = "http://127.0.0.1:8000",
    endpoint: Annotated[str, typer.Option("--endpoint", help="classify, similar or ceiling.")] = "classify",
    scenario: Annotated[str, typer.Option("--scenario", help="server, single-stream or offline.")] = "server",
    p99_ms: Annotated[
        float | None, typer.Option("--p99-ms", help="Latency bound (default 10; 25 for similar).")
    ] = None,  # noqa: E501
    duration: Annotated[
        float,
        typer.Option(
            "--duration",
            min=0.1,
            help="Seconds per server-scenario step (>= 10 for a result that meets the MLPerf minimum).",
        ),
    ] = 10.0,
    rates: Annotated[
        str | None,
        typer.Option("--rates", help="Fixed rates (req/s), e.g. 250,500,1000, instead of the search."),
    ] = None,
    start_rate: Annotated[
        float, typer.Option("--start-rate", min=1.0, help="First rate of the search.")
    ] = 100.0,
    max_rate: Annotated[float, typer.Option("--max-rate", min=1.0)] = 20_000.0,
    queries: Annotated[int, typer.Option("--queries", min=1, help="single-stream/offline: requests.")] = 1024,
    min_queries: Annotated[int, typer.Option("--min-queries", min=1, help="Least queries per step.")] = 662,
    upload: Annotated[
        str, typer.Option("--upload", help="multipart (a browser's form) or raw (image/png body).")
    ] = "multipart",  # noqa: E501
    k: Annotated[int, typer.Option("--k", min=1, help="k for /v1/similar.")] = 5,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.01, help="Seconds before a request counts as timed out.")
    ] = 2.0,
    max_requests: Annotated[
        int, typer.Option("--max-requests", min=1, help="Bound on all requests sent.")
    ] = 400_000,
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", min=1.0, help="Bound on the whole run.")
    ] = 900.0,
    with_ceiling: Annotated[
        bool,
        typer.Option(
            "--with-ceiling", help="Also search /v1/ceiling and state the served rate as a fraction of it."
        ),
    ] = False,
    label: Annotated[str, typer.Option("--label", help="A note stored with the result.")] = "",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a non-loopback --url (a machine you run).")
    ] = False,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Open-loop load test of a running `toolkit serve` (Poisson arrivals, latency from scheduled
    time, send lag checked); results to ARTIFACTS/bench/."""
    require_serving()
    from toolkit.loadtest import LoadSettings

    settings = LoadSettings(
        url=url,
        endpoint=endpoint,
        scenario=scenario,
        p99_ms=p99_ms,
        step_seconds=duration,
        min_queries=min_queries,
        rates=_parse_rates(rates),
        start_rate=start_rate,
        max_rate=max_rate,
        queries=queries,
        timeout_s=timeout,
        upload=upload,
        k=k,
        seed=seed,
        max_requests=max_requests,
        max_seconds=max_seconds,
        allow_remote=allow_remote,
        label=label,
    )
    run_loadtest(settings, artifacts=artifacts, data_dir=data_dir, with_ceiling=with_ceiling)


def _parse_rates(raw: str | None) -> tuple[float, ...]:
    if not raw:
        return ()
    try:
        rates = tuple(float(r) for r in raw.split(",") if r.strip())
    except ValueError:
        raise UsageError(
            f"--rates {raw!r}: expected numbers separated by commas, e.g. 250,500,1000"
        ) from None
    if not rates or min(rates) <= 0:
        raise UsageError(f"--rates {raw!r}: rates must be positive")
    return rates


def run_loadtest(
    settings: Any,
    *,
    artifacts: Path | None,
    data_dir: Path | None,
    with_ceiling: bool = False,
    ceiling: Any = None,
) -> Any:
    """Run, print and write one load test; with `with_ceiling` (or a given ceiling result) also state
    the rate as a fraction of /v1/ceiling's at the same bound. Returns the result."""
    from dataclasses import replace

    from toolkit.loadtest import record

    if with_ceiling and ceiling is None and settings.endpoint != "ceiling":
        label = (settings.label + " ceiling").strip()
        ceiling = _run_and_show(
            replace(settings, endpoint="ceiling", p99_ms=settings.bound(), label=label), data_dir
        )
        console.print(f"Wrote {record.write_result(ceiling, artifacts)}")
    result = _run_and_show(settings, data_dir)
    if ceiling is not None:
        _add_fraction(result, ceiling)
    console.print(f"Wrote {record.write_result(result, artifacts)}")
    if result.scenario == "server":
        _plot([r for r in (result, ceiling) if r is not None], artifacts, result.endpoint)
    console.print(f"[bold]Note:[/] {result.machine['shared']}.")
    return result


def _plot(results: list[Any], artifacts: Path | None, name: str) -> None:
    from datetime import datetime, timezone

    from toolkit.artifacts import bench_dir
    from toolkit.loadtest.plot import plot_curves

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = plot_curves(results, bench_dir(artifacts) / f"{stamp}-loadtest-{name}-curve.png")
    if path is not None:
        console.print(f"Curve (rate vs p99): {path}")


def _run_and_show(settings: Any, data_dir: Path | None):
    from toolkit.loadtest import scenarios

    console.rule(f"[bold]loadtest {settings.endpoint} ({settings.scenario})")
    result = scenarios.run(settings, progress=lambda line: err_console.print(line), data_dir=data_dir)
    print_result(result)
    return result


def _add_fraction(result: Any, ceiling: Any) -> None:
    served, top = result.summary.get("best_rate"), ceiling.summary.get("best_rate")
    result.summary["ceiling_rate"] = top
    result.summary["ceiling_file"] = Path(ceiling.file).name
    result.summary["fraction_of_ceiling"] = round(served / top, 3) if served and top else None
    if served and top:
        console.print(
            f"Served {result.endpoint}: {served:,.0f} req/s = {served / top:.0%} of the stack's "
            f"ceiling ({top:,.0f} req/s: same uploads, decoded and converted, no model)."
        )


def _ms(value: float | None) -> str:
    return "fail" if value is None else f"{value:.2f}"


STEP_COLUMNS = [
    "rate",
    "achieved",
    "queries",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "failed",
    "lag p99 ms",
    "valid",
    "verdict",
    "mean batch",
    "batch sizes (size:calls)",
    "cpu% cli/srv",
    "load",
]


def _step_row(s: Any) -> list[Any]:
    batches = ", ".join(f"{size}:{n}" for size, n in list(s.batch_sizes.items())[:6])
    if len(s.batch_sizes) > 6:
        batches += ", ..."
    cpu = f"{s.client_cpu_pct:.0f}/{s.server_cpu_pct:.0f}" if s.server_cpu_pct is not None else "-"
    return [
        f"{s.target_rate:,.0f}" if s.target_rate else "-",
        f"{s.achieved_rate:,.0f}",
        f"{s.queries:,}",
        _ms(s.p50_ms),
        _ms(s.p90_ms),
        _ms(s.p99_ms),
        s.queries - s.ok,
        f"{s.send_lag_p99_ms:.3f}",
        "yes" if s.valid else "NO",
        _verdict_cell(s),
        f"{s.mean_batch:.1f}" if s.mean_batch else "-",
        batches,
        cpu,
        f"{s.load_avg_1m[0]:.1f}" if s.load_avg_1m else "-",
    ]


def _verdict_cell(s: Any) -> str:
    if s.target_rate is None:  # single-stream and offline have no bound to pass
        return "done" if s.ok == s.queries else "errors"
    return "PASS" if s.passed else "fail"


def print_result(result: Any) -> None:
    server = result.server.get("classifier", {})
    batching = result.server.get("batching", {})
    title = (
        f"{result.scenario} scenario, /v1/{result.endpoint} ({result.upload} PNG uploads of real test "
        f"images), {server.get('spec', '?')} {server.get('key', '?')}, max batch "
        f"{batching.get('max_batch', '?')}" + (f" [{result.label}]" if result.label else "")
    )
    steps = sorted(result.steps, key=lambda s: s.target_rate or 0)
    print_table(title, STEP_COLUMNS, [_step_row(s) for s in steps])
    for step in steps:
        if not step.passed and step.target_rate:
            console.print(f"  {step.target_rate:,.0f} req/s: {step.verdict}")
    console.print(_summary_line(result))
    for note in result.notes:
        console.print(f"  note: {note}")


def _summary_line(result: Any) -> str:
    summary = result.summary
    if result.scenario == "single-stream":
        return (
            f"single-stream p90 latency: [bold]{_ms(summary.get('p90_ms'))} ms[/] "
            f"(p50 {_ms(summary.get('p50_ms'))} ms)"
        )
    if result.scenario == "offline":
        return f"offline throughput: [bold]{summary['throughput']:,.0f} req/s[/] ({summary['errors']} failed)"
    best = summary.get("best_rate")
    if not best:
        return f"Best rate with p99 <= {result.p99_bound_ms:g} ms: none of the rates tried"
    short = "" if summary.get("best_meets_minimum") else " (its step was shorter than 10 s or 662 queries)"
    return (
        f"Best rate with p99 <= {result.p99_bound_ms:g} ms: [bold]{best:,.0f} req/s[/] "
        f"(p99 {summary['best_p99_ms']:.2f} ms){short}"
    )


# ---------------------------------------------------------------- toolkit run --serve


def serve_stage(*, exp: str, artifacts: Path | None, data_dir: Path | None = None, **_: Any) -> list[Any]:
    """Serve the spec's pick in a child process (TensorFlow blocked), batching on and off; run the
    server scenario on /v1/classify (p99 <= 10 ms) and /v1/similar (<= 25 ms), and on /v1/ceiling
    at each bound."""
    require_serving()
    from dataclasses import replace

    from toolkit.loadtest import LoadSettings, record
    from toolkit.serve.process import spawn

    common = [
        "--exp",
        exp,
        *(["--artifacts", str(artifacts)] if artifacts else []),
        *(["--data-dir", str(data_dir)] if data_dir else []),
    ]
    results: list[Any] = []
    for label, max_batch in (("batching on", "64"), ("batching off", "1")):
        with spawn([*common, "--max-batch", max_batch]) as server:
            console.print(
                f"Started `toolkit serve --max-batch {max_batch}` at {server.url} (TensorFlow blocked)."
            )
            for endpoint in ("classify", "similar"):
                settings = LoadSettings(url=server.url, endpoint=endpoint, label=label)
                ceiling = None
                if label == "batching on":
                    ceiling = _run_and_show(
                        replace(
                            settings,
                            endpoint="ceiling",
                            p99_ms=settings.bound(),
                            label=f"ceiling at the {endpoint} bound",
                        ),
                        data_dir,
                    )
                    console.print(f"Wrote {record.write_result(ceiling, artifacts)}")
                    results.append(ceiling)
                results.append(
                    run_loadtest(settings, artifacts=artifacts, data_dir=data_dir, ceiling=ceiling)
                )
    _print_stage_summary(results)
    _plot(results, artifacts, "stage")
    return results


def _print_stage_summary(results: list[Any]) -> None:
    best = {(r.endpoint, r.label): r for r in results}
    rows = []
    for endpoint in ("classify", "similar"):
        on, off = best.get((endpoint, "batching on")), best.get((endpoint, "batching off"))
        rate_on = on.summary.get("best_rate") if on else None
        rate_off = off.summary.get("best_rate") if off else None
        fraction = on.summary.get("fraction_of_ceiling") if on else None
        rows.append(
            [
                endpoint,
                f"{on.p99_bound_ms:g}" if on else "-",
                _rate(rate_on),
                _rate(rate_off),
                f"{rate_on / rate_off:.1f}x" if rate_on and rate_off else "-",
                _rate(on.summary.get("ceiling_rate") if on else None),
                f"{fraction:.0%}" if fraction else "-",
            ]
        )
    print_table(
        "Served rate: the highest rate whose p99 stayed within the bound",
        ["endpoint", "p99 bound ms", "batching on", "batching off", "gain", "ceiling", "of ceiling"],
        rows,
    )


def _rate(value: float | None) -> str:
    return f"{value:,.0f} req/s" if value else "-"


OPTIONAL_RUN_STAGES.append(("serve", "serve+loadtest", serve_stage))
