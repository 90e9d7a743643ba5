"""The server under test: its address (loopback only unless allowed), the real PNG uploads it is
sent, its /metrics and /v1/model, and the facts of the machine the client runs on."""

from __future__ import annotations

import ipaddress
import math
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from toolkit.core.errors import UsageError


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    base_url: str

    def url(self, path: str) -> str:
        return self.base_url + path


def parse_target(url: str, *, allow_remote: bool = False) -> Target:
    """Only http://HOST:PORT with HOST on loopback, unless the user explicitly allows another."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"--url {url!r}: expected http://HOST:PORT (plain HTTP, e.g. http://127.0.0.1:8000)")
    if parts.path not in ("", "/") or parts.query:
        raise UsageError(f"--url {url!r}: give only the server's address; --endpoint picks the route")
    host, port = parts.hostname, parts.port or 80
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise UsageError(f"--url {url!r}: cannot resolve {host} ({exc.strerror})") from None
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote and not allow_remote:
        raise UsageError(
            f"--url {url!r} resolves to {', '.join(remote)}, which is not loopback; a load test "
            "targets this machine only unless you pass --allow-remote for an address you run"
        )
    literal = host if len(addresses) != 1 else next(iter(addresses))
    return Target(literal, port, f"http://{'[' + host + ']' if ':' in host else host}:{port}")


# ---------------------------------------------------------------- requests


def png_uploads(count: int, data_dir=None) -> list[bytes]:
    """The first `count` real Fashion-MNIST test images, each encoded as a PNG file."""
    import io

    from PIL import Image

    from toolkit.core import data

    images = data.load(data_dir).x_test[:count]
    out = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def encode_requests(target: Target, path: str, pngs: list[bytes], upload: str) -> list[bytes]:
    """Each upload as the exact bytes of one HTTP/1.1 request, encoded once by httpx."""
    import httpx

    out = []
    for i, png in enumerate(pngs):
        if upload == "multipart":
            request = httpx.Request(
                "POST", target.url(path), files={"image": (f"test-{i}.png", png, "image/png")}
            )
        else:
            request = httpx.Request(
                "POST", target.url(path), content=png, headers={"Content-Type": "image/png"}
            )
        body = request.read()
        head = [f"POST {request.url.raw_path.decode()} HTTP/1.1"]
        head += [
            f"{name.decode()}: {value.decode()}"
            for name, value in request.headers.raw
            if name.lower() not in (b"connection",)
        ]
        head.append("Connection: keep-alive")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


# ---------------------------------------------------------------- server-side readings


def scrape(target: Target, endpoint: str) -> dict[str, Any]:
    """Batch-size bucket counts and the server's CPU seconds from its /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(target.url("/metrics"), timeout=5.0, follow_redirects=False).text
    except httpx.HTTPError:
        return {}
    buckets: dict[float, float] = {}
    cpu = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "toolkit_serve_batch_size_bucket" and sample.labels.get("endpoint") == endpoint:
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "process_cpu_seconds_total":
                cpu = sample.value
    return {"buckets": buckets, "cpu": cpu}


def batch_histogram(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Runtime calls per batch size during a step, from two cumulative histograms."""
    b0, b1 = before.get("buckets", {}), after.get("buckets", {})
    edges = sorted(e for e in b1 if math.isfinite(e))
    out, below = {}, 0.0
    for edge in edges:
        cumulative = b1[edge] - b0.get(edge, 0.0)
        if cumulative - below > 0:
            out[str(int(edge))] = int(round(cumulative - below))
        below = cumulative
    over = b1.get(math.inf, 0.0) - b0.get(math.inf, 0.0) - below
    if over > 0:
        out[f">{int(edges[-1]) if edges else 0}"] = int(round(over))
    return out


def get_model(target: Target) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.get(target.url("/v1/model"), timeout=5.0, follow_redirects=False)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise UsageError(
            f"no toolkit server answers at {target.base_url} ({exc}); start one with "
            "`toolkit serve --exp NAME` or correct --url"
        ) from None


# ---------------------------------------------------------------- one step


def machine(target: Target) -> dict[str, Any]:
    from toolkit.core.machine import cpu_count, cpu_model

    cores = cpu_count()
    local = ipaddress.ip_address(target.host.split("%")[0]).is_loopback if _is_ip(target.host) else True
    shared = (
        (
            f"client and server share this machine's {cores} cores (loopback): every figure includes "
            "the client's own CPU use"
        )
        if local
        else "client and server run on different machines"
    )
    return {"cpu": cpu_model(), "cores": cores, "shared": shared, "hostname": socket.gethostname()}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True
