"""`toolkit loadtest`, and how load tests show (LoadtestPrinter, also the view of the serve stage
of `toolkit run --serve`). Thin over toolkit.loadtest (imported inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.options import ArtifactsOption, DataDirOption
from toolkit.cli.output import console, err_console, print_table
from toolkit.core.errors import UsageError


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
    from toolkit.loadtest import LoadSettings
    from toolkit.loadtest.run import run_loadtest
    from toolkit.serve.server import require_serving

    require_serving()

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
    settings.check()  # before anything is printed or sent
    run_loadtest(settings, LoadtestPrinter(), root=artifacts, data_dir=data_dir, with_ceiling=with_ceiling)


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


class LoadtestPrinter:
    """Each load test as a rule, its progress lines, its table and summary, and what it wrote."""

    def started(self, settings: Any) -> None:
        console.rule(f"[bold]loadtest {settings.endpoint} ({settings.scenario})")

    def progress(self, line: str) -> None:
        err_console.print(line)

    def finished(self, result: Any) -> None:
        print_result(result)

    def wrote(self, what: str, path: Path) -> None:
        console.print(f"Curve (rate vs p99): {path}" if what == "curve" else f"Wrote {path}")

    def fraction(self, result: Any, served: float, top: float) -> None:
        console.print(
            f"Served {result.endpoint}: {served:,.0f} req/s = {served / top:.0%} of the stack's "
            f"ceiling ({top:,.0f} req/s: same uploads, decoded and converted, no model)."
        )

    def completed(self, result: Any) -> None:
        console.print(f"[bold]Note:[/] {result.machine['shared']}.")

    def server_started(self, url: str, max_batch: str) -> None:
        console.print(f"Started `toolkit serve --max-batch {max_batch}` at {url} (TensorFlow blocked).")

    def summary(self, results: list[Any]) -> None:
        _print_stage_summary(results)


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
