"""`toolkit serve` in a child process on a free loopback port, for `toolkit run --serve` and the
tests: started, awaited until /healthz answers, stopped with Ctrl-C (SIGINT) and reaped, so no
server or port is left behind.

By default the child cannot import TensorFlow (or Keras, tf2onnx): every served figure comes from a
process that proves the serving path needs neither.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from toolkit.core.errors import ToolkitError

# What a serving host does not have: TensorFlow (and its converters), and scipy, which only the
# report needs (serve reads the report's pick record instead of recomputing it).
BLOCKED = ("tensorflow", "keras", "tf2onnx", "tf_keras", "scipy")
_LAUNCH = """import os, signal, sys
if sys.platform == "linux":  # stop with the process that started us, even if it is killed outright
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != {parent}:
        sys.exit(1)
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
from toolkit.cli.app import main
sys.argv = ["toolkit", *sys.argv[1:]]
main()
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    port: int
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "".join(self.output)

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C, then wait for the drained exit (killed after `timeout`); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def launch_command(
    args: Sequence[str], *, block_tensorflow: bool = True, python: str = sys.executable
) -> list[str]:
    """`toolkit ARGS` as a child that exits with this process and, by default, cannot import TensorFlow."""
    code = _LAUNCH.format(parent=os.getpid(), blocked=BLOCKED if block_tensorflow else ())
    return [python, "-c", code, *args]


@contextlib.contextmanager
def spawn(
    args: Sequence[str],
    *,
    port: int | None = None,
    block_tensorflow: bool = True,
    ready_timeout: float = 180.0,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> Iterator[ServerProcess]:
    """Run `toolkit serve ARGS --port PORT` until the block ends. ARGS must not give --port/--host."""
    import httpx

    port = port or free_port()
    command = launch_command(
        ["serve", *args, "--host", "127.0.0.1", "--port", str(port)],
        block_tensorflow=block_tensorflow,
        python=python,
    )
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
        start_new_session=True,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", port, process)
    reader = threading.Thread(
        target=lambda: server.output.extend(iter(process.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                reader.join(5)
                raise ToolkitError(
                    f"`toolkit serve {' '.join(args)}` exited {process.returncode} before "
                    f"serving:\n{server.log.strip()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ToolkitError(
                    f"`toolkit serve` did not answer /healthz within {ready_timeout:g} s:\n"
                    f"{server.log.strip()}"
                )
            time.sleep(0.2)
        yield server
    finally:
        server.interrupt()
        reader.join(5)
