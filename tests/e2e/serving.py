"""Start real `stalwart` server processes on free loopback ports for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import trustme

__all__ = ["ServerProcess", "free_port", "production_env", "stalwart_bin", "tls_files"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_files(directory: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A certificate for 127.0.0.1 from a throwaway CA: a client context trusting it, and the
    certificate chain and key files for `stalwart serve --ssl-certfile/--ssl-keyfile`."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(certfile), append=index > 0)
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context, certfile, keyfile


def production_env(database_url: str, **extra: str) -> dict[str, str]:
    """The least a production server needs to start (a secret, CORS origins, a database outside
    temporary folders, password hashing at the production floor), plus `extra`."""
    return {
        "STALWART_ENV": "production",
        "STALWART_SECRET_KEY": "k" * 48,
        "STALWART_CORS_ORIGINS": "https://app.example.com",
        "STALWART_DATABASE_URL": database_url,
        "STALWART_ARGON2_TIME_COST": "2",
        "STALWART_ARGON2_MEMORY_KIB": "19456",
        **extra,
    }


def stalwart_bin() -> str:
    return str(Path(sys.executable).with_name("stalwart"))


class ServerProcess:
    """`stalwart serve` in a child process with its own environment and log file."""

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        port: int | None = None,
        scheme: str = "http",
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.scheme = scheme
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"server-{self.port}.log"
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "STALWART_ENV": "test",
            "STALWART_DATA_DIR": str(data_dir),
            "STALWART_ARGON2_TIME_COST": "1",
            "STALWART_ARGON2_MEMORY_KIB": "64",
            "STALWART_ARGON2_PARALLELISM": "1",
            **(env or {}),
        }
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def run_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [stalwart_bin(), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [stalwart_bin(), "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/health/live", timeout=1, verify=False)  # noqa: S501 - self-signed test certificates
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
