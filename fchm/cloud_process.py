"""``fchm cloud serve`` as a child process on loopback: for the demo, the benchmarks,
and the tests that must kill and restart a real cloud.

    CloudProcess(bundle, data_dir).start() ─► admin API key ─► spawn ─► poll /readyz ─► ready
                                   .api() (httpx client with that key), .create_key(...)
                                   .kill() (SIGKILL) / .stop() (SIGTERM, exit code)
    WorkerProcess(bundle, data_dir, env) ─► `fchm worker` ─► its "ready" line ─► .kill()/.stop()

``env`` adds settings (``FCHM_CLOUD_DATABASE_URL``, ``FCHM_CLOUD_VIEW_QUEUE_URL``…), so
several replicas and workers can share one database and queue.

Ports are picked once, so a restarted cloud comes back where its edges expect it. Keys
are written straight into the cloud's SQLite file in ``data_dir``, as
``fchm cloud key create`` does, so they work before, during and after a run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Child:
    process: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """SIGKILL: no goodbye, as a crash or a power cut (mid-frame, mid-job)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and the exit code (-9 if it had to be killed)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


class CloudProcess(_Child):
    def __init__(
        self,
        bundle: Path,
        data_dir: Path,
        log: Path | None = None,
        onnx_threads: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.bundle, self.data_dir, self.log = bundle, data_dir, log
        self.grpc_port, self.http_port = free_port(), free_port()
        # On a small machine the cloud shares the cores with an edge: one ORT thread.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "FCHM_CLOUD_ONNX_THREADS": str(onnx_threads), **(env or {})}  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.api_key: str | None = None
        """an admin key, made by the first start()"""

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def create_key(self, name: str, scopes: Sequence[str], cameras: Sequence[str] = ()) -> str:
        """A new REST API key in this cloud's database (running or not)."""
        from cloud.store.api_keys import ApiKeyStore
        from cloud.store.frame_store import open_engine

        self.data_dir.mkdir(parents=True, exist_ok=True)
        url = self.env.get("FCHM_CLOUD_DATABASE_URL") or f"sqlite:///{self.data_dir / 'fchm.db'}"
        engine = open_engine(url)
        try:
            return ApiKeyStore(engine).create(name, scopes, cameras)[1]
        finally:
            engine.dispose()

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = key or self.api_key
        if key is None:
            raise RuntimeError("no API key yet: start() makes one, or pass create_key()'s")
        return {"Authorization": f"Bearer {key}"}

    def api(self, key: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for the REST API with ``key`` (default: the admin key)."""
        return httpx.Client(base_url=self.http_base, headers=self.headers(key), timeout=timeout)

    def start(self, timeout_s: float = 120) -> CloudProcess:
        if self.api_key is None:  # a restart keeps the key: it is in the database
            self.api_key = self.create_key("cloud-process", ["admin"])
        out = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fchm", "cloud", "serve", "--bundle", str(self.bundle),
             "--data-dir", str(self.data_dir), "--grpc-port", str(self.grpc_port),
             "--http-port", str(self.http_port)],
            stdout=out, stderr=subprocess.STDOUT, env=self.env,
        )  # fmt: skip
        if self.log is not None:
            out.close()  # type: ignore[union-attr]  # the child holds its own handle
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-2000:] if self.log is not None else ""
                raise RuntimeError(f"cloud exited with {self.process.returncode}\n{tail}")
            try:
                if httpx.get(f"{self.http_base}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cloud not ready after {timeout_s:g} s")
            time.sleep(0.1)

    def __enter__(self) -> CloudProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()


class WorkerProcess(_Child):
    """``fchm worker`` as a child process: ready once it prints its ready line."""

    def __init__(
        self, bundle: Path, data_dir: Path, log: Path, env: Mapping[str, str], threads: int = 1
    ) -> None:
        self.bundle, self.data_dir, self.log = bundle, data_dir, log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "FCHM_CLOUD_ONNX_THREADS": str(threads), **env}  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120) -> WorkerProcess:
        start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fchm", "worker", "--bundle", str(self.bundle),
                 "--data-dir", str(self.data_dir)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while b"fchm worker ready" not in self.log.read_bytes()[start:]:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-2000:]
                raise RuntimeError(f"worker exited with {self.process.returncode}\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {timeout_s:g} s")
            time.sleep(0.05)
        return self
