"""A real `qilu serve` process on a free loopback port, for tests that talk to it over a socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from qilu.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(settings: Settings, name: str, extra_env: dict[str, str] | None = None, *,
                   port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start it with the tests' environment (plus `extra_env`), wait for /healthz, stop it afterwards."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = settings.path("log", f"test-{name}-server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(extra_env or {}), "QILU_PUBLIC_BASE_URL": base}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qilu", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 40
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"qilu serve exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"qilu serve did not answer /healthz within 40 s; see {log_path}")
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
