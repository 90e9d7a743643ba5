"""The benchmark engine shared by `toolkit bench` and `pytest bench/`, so both measure the same way.

    plan     cases and filters: which files x runtimes x devices x batches x threads
    engine   one case: prepare outside the clock, warm up, time, check every output
    gpu      the CUDA-only check and IO binding of GPU cases
    peaks    this machine's facts and measured matmul peaks ("% of peak")
    results  the versioned results file under ARTIFACTS/bench/ (one reader, one writer)
    kinds    case kinds: where a kind's cases run and how (inference today)
    worker   cases in a fresh process (`python -m toolkit.benchmark.worker`)
    driver   run_benchmarks(): the one driver both callers use
    fallback untrained models for a fresh clone's `pytest bench/`

Importing this package imports nothing heavy; the modules import ONNX Runtime, LiteRT or
TensorFlow only when a case runs.
"""
