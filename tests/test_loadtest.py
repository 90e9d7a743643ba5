"""`toolkit loadtest`: where it may send, Poisson arrivals, how a step is judged, the record file,
the engine against servers that fail, stall or refuse, and short real runs against `toolkit serve`
over TCP (seconds, not minutes: every bound here is small)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import socketserver
import threading
import time

import numpy as np
import pytest
from conftest import SERVE_SPEC
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.core import loadtest_record as record
from toolkit.core.errors import ArtifactError, UsageError
from toolkit.loadtest import client, scenarios, steps
from toolkit.loadtest import target as targets

runner = CliRunner()


# ---------------------------------------------------------------- where it may send


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:9", "http://[::1]:8000"])
def test_loopback_targets_are_accepted(url):
    target = targets.parse_target(url)
    assert target.port in (8000, 9) and target.base_url.startswith("http://")


@pytest.mark.parametrize(
    "url,why",
    [
        ("http://10.0.0.1:8000", "not loopback"),
        ("http://192.168.1.5:80", "not loopback"),
        ("https://127.0.0.1:8000", "plain HTTP"),
        ("http://127.0.0.1:8000/v1/classify", "only the server's address"),
    ],
)
def test_other_targets_are_refused_before_anything_is_sent(url, why):
    with pytest.raises(UsageError, match=why):
        targets.parse_target(url)


def test_the_cli_refuses_a_remote_target_with_exit_2():
    result = runner.invoke(app, ["loadtest", "--url", "http://10.0.0.1:8000"])
    assert result.exit_code == 2 and "--allow-remote" in result.output


# ---------------------------------------------------------------- arrivals and verdicts


def test_poisson_arrivals_have_the_rate_and_the_spread_of_a_poisson_process():
    offsets = steps.poisson_offsets(1000.0, 10.0, 662, np.random.default_rng(0)) / 1e9
    gaps = np.diff(offsets)
    assert offsets[0] == 0 and offsets[-1] >= 10.0 and len(offsets) >= 9_500
    assert gaps.mean() == pytest.approx(1e-3, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps: CV = 1
    short = steps.poisson_offsets(10.0, 1.0, 662, np.random.default_rng(0))
    assert len(short) >= 662  # at least the minimum number of queries, however low the rate


def _outcomes(latency_ms, lag_ms=0.01, status=200, n=1000) -> client.Outcomes:
    scheduled = np.arange(n, dtype=np.int64) * 1_000_000  # one per ms
    out = client.Outcomes.empty(scheduled)
    out.sent[:] = scheduled + int(lag_ms * 1e6)
    out.done[:] = scheduled + int(latency_ms * 1e6)
    out.status[:] = status
    return out


def test_a_step_within_the_bound_passes():
    step = steps.summarize(_outcomes(4.0), target_rate=1000, bound_ms=10, min_queries=662)
    assert step.passed and step.valid and step.p99_ms == pytest.approx(4.0)
    assert not step.meets_minimum  # one second of arrivals, not ten


def test_failures_count_as_infinite_latency_never_as_fast_answers():
    out = _outcomes(2.0)
    out.status[:20] = 503
    out.status[20:25] = client.TIMEOUT
    out.done[20:25] = 0
    step = steps.summarize(out, target_rate=1000, bound_ms=10, min_queries=10)
    assert not step.passed and step.p99_ms is None and step.errors == {"503": 20, "timeout": 5}
    assert step.ok == 975 and "25 of 1000 requests did not succeed" in step.verdict


def test_a_client_that_fell_behind_makes_the_step_invalid_not_slow():
    step = steps.summarize(_outcomes(4.0, lag_ms=1.5), target_rate=1000, bound_ms=10, min_queries=10)
    assert not step.valid and not step.passed and step.verdict.startswith("invalid")
    closed = steps.summarize(_outcomes(4.0, lag_ms=1.5), target_rate=None, bound_ms=None, min_queries=10)
    assert closed.valid  # closed-loop and all-at-once runs have no schedule to keep


def test_over_the_bound_fails():
    step = steps.summarize(_outcomes(12.0), target_rate=1000, bound_ms=10, min_queries=10)
    assert step.valid and not step.passed and "over the 10 ms bound" in step.verdict


def test_batch_histogram_is_the_difference_of_two_scrapes():
    before = {"buckets": {1.0: 10, 2.0: 12, 3.0: 12, 4.0: 15, float("inf"): 15}}
    after = {"buckets": {1.0: 30, 2.0: 35, 3.0: 40, 4.0: 45, float("inf"): 46}}
    assert steps.batch_histogram(before, after) == {"1": 20, "2": 3, "3": 5, "4": 2, ">4": 1}


def test_the_search_doubles_then_bisects_to_the_resolution():
    settings = scenarios.LoadSettings(start_rate=100, resolution=1.1)
    tried = []

    def measure(rate):
        tried.append(rate)
        return steps.summarize(
            _outcomes(4.0 if rate <= 1234 else 40.0), target_rate=rate, bound_ms=10, min_queries=1
        )

    scenarios._search(measure, settings, [])
    assert tried[:5] == [100, 200, 400, 800, 1600]
    passing = [r for r in tried if r <= 1234]
    failing = [r for r in tried if r > 1234]
    assert min(failing) / max(passing) <= 1.1 and max(passing) <= 1234


def test_an_invalid_step_is_measured_again_and_twice_narrows_the_search_below_it():
    settings = scenarios.LoadSettings(start_rate=100, resolution=1.1)
    lags = iter([0.01, 5.0, 0.01, 5.0, 5.0] + [0.01] * 20)  # 100 ok; 200 invalid, then ok; 400 twice
    tried, notes = [], []

    def measure(rate):
        tried.append(rate)
        return steps.summarize(
            _outcomes(4.0, lag_ms=next(lags)), target_rate=rate, bound_ms=10, min_queries=1
        )

    scenarios._search(measure, settings, notes)
    assert tried[:5] == [100, 200, 200, 400, 400] and 200 < tried[5] < 400
    assert "400 req/s: the client could not keep its schedule twice" in notes[0]
    assert "was the limit there, so the search narrows below it" in notes[0]
    assert "the best rate" in notes[-1] and "is the client's limit, not the server's" in notes[-1]


def test_a_client_that_cannot_keep_up_is_bisected_like_a_failure():
    """Issue 24: 1,600 req/s passed, 3,200 was invalid twice (the client, sharing the cores, fell
    behind) and the search stopped. Now it bisects between them to the resolution, as a fixed
    curve (--rates) would find: the best rate is the client's limit, and says so."""
    settings = scenarios.LoadSettings(start_rate=100, resolution=1.1)
    tried, notes = [], []

    def measure(rate):
        tried.append(rate)
        lag = 0.3 if rate <= 2400 else 1.8  # the client keeps its schedule up to 2,400 req/s
        return steps.summarize(_outcomes(4.0, lag_ms=lag), target_rate=rate, bound_ms=10, min_queries=1)

    scenarios._search(measure, settings, notes)
    valid = [r for r in tried if r <= 2400]
    assert tried[:7] == [100, 200, 400, 800, 1600, 3200, 3200]
    assert 2400 / 1.1 <= max(valid) <= 2400
    assert min(r for r in tried if r > 2400) / max(valid) <= 1.1
    assert not any(note.startswith("stopped") for note in notes)
    assert f"the best rate, {max(valid):,.0f} req/s, is the client's limit" in notes[-1]


def test_a_first_rate_invalid_twice_while_the_server_kept_up_moves_the_search_up():
    """The client waking late at low load: 100 req/s invalid twice, every answer fast -> 200 is
    measured (100 reports nothing); an invalid rate with failures still stops the search."""
    settings = scenarios.LoadSettings(start_rate=100, resolution=1.5)
    lags = iter([5.0, 5.0] + [0.01] * 20)
    tried, notes = [], []

    def measure(rate):
        tried.append(rate)
        return steps.summarize(
            _outcomes(4.0 if rate <= 500 else 40.0, lag_ms=next(lags)), target_rate=rate, bound_ms=10,
            min_queries=1,
        )

    scenarios._search(measure, settings, notes)
    assert tried[:4] == [100, 100, 200, 400] and "the search goes on at 200" in notes[0]
    assert max(r for r in tried if r <= 500) >= 400

    def failing(rate):
        tried.append(rate)
        out = _outcomes(4.0, lag_ms=5.0)
        out.status[:3] = 503
        return steps.summarize(out, target_rate=rate, bound_ms=10, min_queries=1)

    tried.clear()
    notes.clear()
    scenarios._search(failing, settings, notes)
    # Answers failed too, and nothing valid below: the machine is too busy to measure.
    assert tried == [100, 100] and "could not keep its schedule at 100 req/s twice" in notes[-1]
    assert "too busy" in notes[-1]


# ---------------------------------------------------------------- the record


def _result() -> record.LoadtestResult:
    step = steps.summarize(_outcomes(3.0), target_rate=1000, bound_ms=10, min_queries=662)
    return record.LoadtestResult(
        scenario="server",
        endpoint="classify",
        url="http://127.0.0.1:1",
        upload="multipart",
        p99_bound_ms=10.0,
        steps=[step],
        summary={"best_rate": 1000.0},
        server={},
        machine={"cores": 2},
        settings={},
    )


def test_the_record_round_trips_and_keeps_todays_bench_readers_working(tmp_path):
    from toolkit.benchmark import inference_results as results
    from toolkit.benchmark import training

    path = record.write_result(_result(), tmp_path)
    doc = json.loads(path.read_text())
    assert (doc["kind"], doc["schema_version"], doc["results"]) == ("loadtest", 1, [])
    back = record.read_result(path)
    assert back.steps[0].p99_ms == pytest.approx(3.0) and back.best_rate == 1000.0
    assert [r.file for r in record.load_results(tmp_path)] == [str(path)]
    # Every other kind's reader passes over it (each reads only its own kind).
    assert results.read_runs(tmp_path) == [] and training.read_training_runs(tmp_path) == []


def test_the_reader_refuses_another_kind_or_version(tmp_path):
    path = record.write_result(_result(), tmp_path)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version 99, newer than this toolkit reads"):
        record.read_result(path)
    path.write_text(json.dumps({**doc, "kind": "bench"}))
    with pytest.raises(ArtifactError, match="not a load-test result"):
        record.read_result(path)


# ---------------------------------------------------------------- the engine against bad servers


@contextlib.contextmanager
def fixed_server(response: bytes | None):
    """A loopback server answering every request with `response`, or never (None)."""
    stop = threading.Event()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            buffer = b""
            while not stop.is_set():
                try:
                    chunk = self.request.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, rest = buffer.split(b"\r\n\r\n", 1)
                    length = int(
                        next(
                            (
                                line.split(b":")[1]
                                for line in head.split(b"\r\n")
                                if line.lower().startswith(b"content-length")
                            ),
                            b"0",
                        )
                    )
                    if len(rest) < length:
                        break
                    buffer = rest[length:]
                    if response is not None:
                        self.request.sendall(response)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            stop.set()
            server.shutdown()


REQUEST = b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc"


def _engine(port, n=40, rate=400.0, timeout_s=0.3):
    offsets = (np.arange(n) * 1e9 / rate).astype(np.int64)
    return asyncio.run(client.run("127.0.0.1", port, [REQUEST], offsets, timeout_s=timeout_s, connections=4))


def test_errors_are_reported_as_errors():
    body = b'{"error": {"status": 503}}'
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with fixed_server(answer) as port:
        out = _engine(port)
    assert (out.status == 503).all() and (out.done > 0).all()


def test_a_server_that_never_answers_gives_timeouts_not_fast_responses():
    with fixed_server(None) as port:
        started = time.monotonic()
        out = _engine(port, n=10, timeout_s=0.3)
        took = time.monotonic() - started
    assert (out.status == client.TIMEOUT).all() and (out.done == 0).all()
    step = steps.summarize(out, target_rate=400, bound_ms=10, min_queries=1)
    assert step.ok == 0 and step.p50_ms is None and step.errors == {"timeout": 10}
    assert took < 3  # bounded: it stops at its timeout


def test_nothing_listening_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConnectionError, match="cannot connect"):
        _engine(port, n=5)


def test_no_server_at_the_address_is_one_line_and_exit_2():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(app, ["loadtest", "--url", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 2 and "no toolkit server answers" in result.output


def test_every_request_opens_a_connection_when_none_is_idle():
    """No client cap: 30 requests due at once over 1 pre-opened connection -> 30 connections."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    with fixed_server(answer) as port:
        out = asyncio.run(
            client.run("127.0.0.1", port, [REQUEST], np.zeros(30, np.int64), timeout_s=2, connections=1)
        )
    assert (out.status == 200).all() and out.connections_opened == 30


# ---------------------------------------------------------------- against toolkit serve


@pytest.fixture
def live(live_server):
    return live_server


def test_server_scenario_against_the_real_server(live, tmp_path):
    settings = scenarios.LoadSettings(
        url=live.url, rates=(50.0, 150.0), step_seconds=1.0, min_queries=40, images=32, warmup_seconds=0.2
    )
    result = scenarios.run(settings)
    assert [s.target_rate for s in result.steps] == [50.0, 150.0]
    for step in result.steps:
        assert step.ok == step.queries and not step.errors
        assert step.p50_ms is not None and step.p50_ms > 0 and step.p99_ms >= step.p50_ms
        # Read from the server's /metrics: every image of the step went through a runtime call.
        assert steps._images(step.batch_sizes) == step.queries
        assert step.server_cpu_pct is not None and step.client_cpu_pct is not None
        assert not step.meets_minimum  # 1 s steps are marked as below the 10 s minimum
    assert result.server["classifier"]["spec"] == SERVE_SPEC
    assert "share this machine's" in result.machine["shared"]
    assert [point[0] for point in result.summary["curve"]] == [50.0, 150.0]


def test_a_step_waits_for_a_busy_server_to_go_idle_first(live, monkeypatch):
    """An idle server is measured at once; one still busy (its CPU reading climbing) is waited for,
    up to the limit, so a step never inherits the last step's backlog."""
    target = targets.parse_target(live.url)
    started = time.monotonic()
    reading = steps.wait_until_idle(target, "classify")
    assert time.monotonic() - started < 2 * steps.IDLE_WINDOW_S + 1 and reading["cpu"] is not None
    readings = iter(range(0, 1000, 1))  # a server using a whole core per reading: always busy
    monkeypatch.setattr(steps, "scrape", lambda *_: {"cpu": float(next(readings))})
    monkeypatch.setattr(steps, "IDLE_MAX_WAIT_S", 1.2)
    started = time.monotonic()
    reading = steps.wait_until_idle(target, "classify")
    assert 1.2 <= time.monotonic() - started < 3 and reading["cpu"] >= 2


def test_single_stream_and_offline_through_the_cli(live, tmp_path):
    root = tmp_path / "artifacts"
    single = runner.invoke(
        app,
        [
            "loadtest",
            "--url",
            live.url,
            "--scenario",
            "single-stream",
            "--queries",
            "40",
            "--artifacts",
            str(root),
        ],
    )
    assert single.exit_code == 0, single.output
    assert "single-stream p90 latency" in single.output and "share this machine's" in single.output
    offline = runner.invoke(
        app,
        [
            "loadtest",
            "--url",
            live.url,
            "--scenario",
            "offline",
            "--queries",
            "60",
            "--endpoint",
            "similar",
            "--upload",
            "raw",
            "--artifacts",
            str(root),
        ],
    )
    assert offline.exit_code == 0, offline.output
    results = record.load_results(root)
    assert [(r.scenario, r.endpoint) for r in results] == [
        ("single-stream", "classify"),
        ("offline", "similar"),
    ]
    assert results[0].summary["p90_ms"] > 0 and results[0].steps[0].ok == 40
    assert results[1].summary["throughput"] > 0 and results[1].steps[0].ok == 60
    assert results[1].steps[0].connections >= 60  # all in flight at once: one connection each


def test_the_bounds_stop_a_search(live):
    settings = scenarios.LoadSettings(
        url=live.url,
        step_seconds=0.5,
        min_queries=20,
        start_rate=40,
        max_requests=50,
        images=8,
        warmup_seconds=0,
    )
    result = scenarios.run(settings)
    assert sum(s.queries for s in result.steps) <= 50
    assert any("--max-requests" in note for note in result.notes)


@pytest.mark.parametrize("rates", ["nan", "inf", "1e12", "100,nan"])
def test_rates_that_are_not_finite_or_beyond_the_bounds_are_one_line_and_exit_2(live, rates, monkeypatch):
    """`--rates nan|inf|1e12` exited 1 (ValueError, OverflowError, a 7.28 TiB allocation)."""
    result = runner.invoke(app, ["loadtest", "--url", live.url, "--rates", rates])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert line.startswith("error: --rates") and "Traceback" not in result.output
    assert ("more than --max-requests 400,000" if rates == "1e12" else "is not a rate") in line
    monkeypatch.setattr(steps, "poisson_offsets", lambda *a: pytest.fail("a schedule was allocated"))
    with pytest.raises(UsageError, match="--rates"):
        scenarios.run(scenarios.LoadSettings(url=live.url, rates=tuple(float(r) for r in rates.split(","))))


def test_the_search_checks_its_bounds_before_allocating_a_step():
    settings = scenarios.LoadSettings(start_rate=1e12, max_rate=1e13, max_requests=1000)
    steps_run, notes = scenarios.server_scenario(None, "/v1/classify", [], settings, lambda _: None)
    assert steps_run == [] and notes[0].startswith("stopped before 1,000,000,000,000 req/s")


def test_the_serve_stage_is_the_pipelines_last_and_optional():
    from toolkit.experiments import pipeline

    assert [s.name for s in pipeline.STAGES] == ["train", "export", "bench", "report", "serve+loadtest"]
    assert pipeline.STAGES[-1].flag == "serve" and all(s.flag is None for s in pipeline.STAGES[:-1])


def test_the_curve_is_drawn(tmp_path):
    from PIL import Image

    from toolkit.loadtest.plot import plot_curves

    path = plot_curves([_result()], tmp_path / "curve.png")
    with Image.open(path) as img:
        assert img.size[0] > 500


def test_run_serve_is_off_by_default_and_runs_the_stage_when_asked(trained_root, tmp_path, monkeypatch):
    import shutil

    from toolkit.experiments import pipeline

    root = tmp_path / "artifacts"
    shutil.copytree(trained_root / SERVE_SPEC, root / SERVE_SPEC, ignore=shutil.ignore_patterns("recommend"))
    calls = []

    def fake_serve(request, view):
        calls.append({"exp": request.exp, "artifacts": request.train.root,
                      "data_dir": request.train.data_dir})

    train_only = pipeline.STAGES[0]
    fake = pipeline.Stage("serve+loadtest", fake_serve, "", "serve")
    monkeypatch.setattr(pipeline, "STAGES", (train_only, fake))
    args = ["run", "--exp", SERVE_SPEC, "--epochs", "1", "--limit-train", "3000", "--artifacts", str(root)]
    assert runner.invoke(app, args).exit_code == 0 and calls == []
    result = runner.invoke(app, [*args, "--serve"])
    assert result.exit_code == 0, result.output
    assert calls == [{"exp": SERVE_SPEC, "artifacts": root, "data_dir": None}]


@pytest.mark.slow  # served_root trains and exports
def test_the_report_shows_a_load_test_as_a_served_row_never_compared(served_root, tmp_path):
    import shutil

    from toolkit import report
    from toolkit.core import artifacts
    from toolkit.export.record import read_exports

    root = tmp_path / "artifacts"
    shutil.copytree(served_root / SERVE_SPEC, root / SERVE_SPEC)
    arts = artifacts.spec_artifacts(SERVE_SPEC, root)
    (entry,) = [e for e in read_exports(arts).exports if e.key == "onnx-fp32"]
    result = _result()
    result.server = {"classifier": {"spec": SERVE_SPEC, "key": "onnx-fp32", "sha256": entry.sha256,
                                    "runtime": "onnxruntime", "threads": 1},
                     "batching": {"max_batch": 16}}
    record.write_result(result, root)
    bench = runner.invoke(app, ["bench", "--exp", SERVE_SPEC, "--format", "onnx-fp32", "--runtime",
                                "onnxruntime", "--batch", "1", "--threads", "1", "--seconds", "0.1",
                                "--repeats", "1", "--no-memory", "--artifacts", str(root)])
    assert bench.exit_code == 0, bench.output
    rep = report.build_report(root, exps=[SERVE_SPEC])
    (served,) = [r for r in rep.rows if r.source == "loadtest"]
    assert (served.key, served.runtime, served.device) == ("onnx-fp32", "onnxruntime http/classify",
                                                           "cpu server batch<=16")
    assert served.p99_ms == pytest.approx(result.steps[0].p99_ms) and served.throughput == 1000.0
    assert not served.compared and not any(served.fronts.values())
    result.server["classifier"]["sha256"] = "0" * 64  # a newer test served a file no longer there
    record.write_result(result, root)
    rep = report.build_report(root, exps=[SERVE_SPEC])
    assert not [r for r in rep.rows if r.source == "loadtest"]
    assert any("has since been replaced" in n for n in rep.notes)
