"""The benchmark engine shared by `toolkit bench` and `pytest bench/`, so both measure the same way.

    plan               cases and filters: which files x runtimes x devices x batches x threads
    placement          where a case runs (here, a worker process, or skipped and why)
    kinds              the registry of case kinds, one module each:
      inference        a file on a runtime: latency and throughput (runner and checks)
      memory           peak RSS, load time and first call, in a fresh child (memchild)
      training         one training step of a spec in a mixed-precision mode
    context            what every case of a run shares: images, references, versions
    timing             the clock and the statistics of its timings
    inference_results  the inference kind's results file (groups, intervals, interval check)
    peaks              this machine's measured matmul peaks ("% of peak")
    gpu                the CUDA-only check and IO binding of GPU cases
    worker             cases in a fresh process (`python -m toolkit.benchmark.worker`)
    driver             run_benchmarks() and measure(): the one driver both callers use
    fallback           untrained models for a fresh clone's `pytest bench/`

Every results file goes through the one bench envelope (toolkit.core.records). Importing this
package imports nothing heavy; the modules import ONNX Runtime, LiteRT or TensorFlow only when a
case runs.
"""
