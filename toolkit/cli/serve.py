"""`toolkit serve`: a thin command over toolkit.serve (imported inside the command)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from toolkit.cli.options import ArtifactsOption, DataDirOption, MaxBatchOption, MaxWaitOption
from toolkit.cli.output import console, err_console, steps
from toolkit.core.errors import Interrupted, UsageError
from toolkit.specs import DEFAULT_SPEC


def serve_cmd(
    exp: Annotated[str, typer.Option("--exp", help="Spec to serve.")] = DEFAULT_SPEC,
    format: Annotated[
        str | None, typer.Option("--format", help="onnx or tflite (default: the report's pick).")
    ] = None,  # noqa: A002,E501
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, fp16, int8 or dynamic.")] = None,
    runtime: Annotated[
        str | None,
        typer.Option("--runtime", help="onnxruntime, openvino (float32), openvino-bf16 or litert "
                                       "(default: the report's pick's, else the format's first)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_batch: MaxBatchOption = 64,
    max_wait_ms: MaxWaitOption = 1.0,
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
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            help="Seconds a connection has to deliver a whole request (headers and body) after it "
            "opens or after its last response; past it, it is closed (408 for a partial request).",
        ),
    ] = 10.0,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            help="Open connections at most; beyond it the one waiting longest without a whole "
            "request is closed (default: the file-descriptor limit less 256).",
        ),
    ] = None,
    artifacts: ArtifactsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve a spec's export (/v1/classify) and its recommender (/v1/similar) over HTTP; never
    imports TensorFlow. Ctrl-C drains in-flight requests and exits 130."""
    from toolkit.serve import BatchingSettings, Limits, ServeSettings, build_state, run
    from toolkit.serve.connections import ConnectionLimits
    from toolkit.serve.server import require_serving

    require_serving()
    connections = ConnectionLimits(header_timeout, max_connections).resolved()

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
        runtime=runtime,
        host=host,
        port=port,
        threads=threads,
        similar=similar,
        catalog_limit=catalog_limit,
        batching=batching,
        limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024)),
        connections=connections,
        drain_seconds=drain_seconds,
    )
    with steps("loading") as report:
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
        f"{ident['parity'].get('status', 'unknown')} ({ident['parity'].get('row') or ident['key']})."
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
    elif state.similar_off is not None:
        err_console.print(f"[yellow]Recommender: off, classification only;[/] /v1/similar answers 503: "
                          f"{state.similar_off}.", soft_wrap=True)
    else:
        console.print("Recommender: off (--no-similar); /v1/similar answers 404.")
    b, lim, conn = settings.batching, settings.limits, settings.connections
    console.print(
        f"Batching: up to {b.max_batch} images per call, {b.max_wait_ms:g} ms max wait, "
        f"classify {'on the event loop' if b.inline else 'on a worker thread'}, similar on a worker "
        "thread, 503 beyond "
        f"{b.max_queue} queued. Limits: body {lim.max_body_bytes:,} bytes, {lim.max_pixels:,} "
        f"decoded pixels, {lim.max_json_images} JSON images, k <= {state.max_k}; a request must arrive "
        f"whole within {conn.header_timeout_s:g} s, {conn.max_connections:,} connections at most. "
        f"Stack: uvicorn ({http_parser_name()}, {event_loop_name()})."
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"[yellow]warning:[/] listening on {settings.host}: reachable from other machines; "
            "this server has no authentication."
        )
