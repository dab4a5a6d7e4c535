"""The production nginx config (deploy/nginx.conf), rendered for loopback and run by a test.

`render_nginx_conf` keeps every proxy directive of deploy/nginx.conf and changes only what
ties it to a container: the upstream servers, the listen addresses, the certificate, the
pid file, the access log, the temporary folders and the worker count. `Nginx` runs it in
the foreground (`nginx -p DIR -c nginx.conf -g 'daemon off;'`) as a child process.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.e2e.serving import free_port

__all__ = ["DEPLOY_NGINX_CONF", "NGINX", "Nginx", "render_nginx_conf"]

REPO = Path(__file__).resolve().parents[2]
DEPLOY_NGINX_CONF = REPO / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _sub(pattern: str, replacement: str, text: str, count: int) -> str:
    """re.sub that insists on exactly `count` matches, so a drift in the template fails loudly."""
    found = len(re.findall(pattern, text, flags=re.MULTILINE))
    if found != count:
        raise AssertionError(f"{pattern!r}: {found} matches in deploy/nginx.conf, expected {count}")
    return re.sub(pattern, replacement, text, flags=re.MULTILINE)


def render_nginx_conf(
    directory: Path,
    upstreams: Sequence[str],
    *,
    http_port: int,
    https_port: int,
    certfile: Path,
    keyfile: Path,
    upstream_keepalive_timeout: str | None = None,
    fail_timeout: str | None = None,
    template: Path = DEPLOY_NGINX_CONF,
) -> Path:
    """Write `directory`/nginx.conf: deploy/nginx.conf with loopback servers and local paths.

    `upstream_keepalive_timeout` and `fail_timeout` shorten those two timings (a test that
    restarts instances would otherwise wait seconds for nothing); every other directive is
    the production one.
    """
    if len(upstreams) != 3:
        raise ValueError("deploy/nginx.conf has three upstream servers")
    text = template.read_text()
    for index, address in enumerate(upstreams, start=1):
        text = _sub(rf"server app{index}:8000 ", f"server {address} ", text, 1)
    text = _sub(r"^worker_processes auto;", "worker_processes 1;", text, 1)
    text = _sub(r"^pid /var/run/nginx\.pid;", f"pid {directory / 'nginx.pid'};", text, 1)
    text = _sub(r"^error_log /dev/stderr warn;", f"error_log {directory / 'error.log'} info;", text, 1)
    text = _sub(
        r"access_log /dev/stdout stalwart_json;",
        f"access_log {directory / 'access.log'} stalwart_json;",
        text,
        1,
    )
    text = _sub(r"/var/cache/nginx/", f"{directory / 'cache'}/", text, 5)
    text = _sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", text, 1)
    text = _sub(r"listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", text, 1)
    text = _sub(r"ssl_certificate /etc/nginx/tls/tls\.crt;", f"ssl_certificate {certfile};", text, 1)
    text = _sub(
        r"ssl_certificate_key /etc/nginx/tls/tls\.key;", f"ssl_certificate_key {keyfile};", text, 1
    )
    if fail_timeout is not None:
        text = _sub(r"fail_timeout=5s;", f"fail_timeout={fail_timeout};", text, 3)
    if upstream_keepalive_timeout is not None:
        text = _sub(
            r"keepalive_timeout 4s;", f"keepalive_timeout {upstream_keepalive_timeout};", text, 1
        )
    (directory / "cache").mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(text)
    return conf


class Nginx:
    """nginx in the foreground with a config written by `render_nginx_conf`."""

    def __init__(self, directory: Path, conf: Path, http_port: int, https_port: int) -> None:
        self.directory = directory
        self.conf = conf
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.https_url = f"https://127.0.0.1:{https_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_upstreams(
        cls,
        directory: Path,
        upstreams: Sequence[str],
        *,
        certfile: Path,
        keyfile: Path,
        upstream_keepalive_timeout: str | None = None,
        fail_timeout: str | None = None,
    ) -> Nginx:
        directory.mkdir(parents=True, exist_ok=True)
        http_port, https_port = free_port(), free_port()
        conf = render_nginx_conf(
            directory,
            upstreams,
            http_port=http_port,
            https_port=https_port,
            certfile=certfile,
            keyfile=keyfile,
            upstream_keepalive_timeout=upstream_keepalive_timeout,
            fail_timeout=fail_timeout,
        )
        return cls(directory, conf, http_port, https_port)

    def command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.directory), "-c", str(self.conf), *extra]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command("-t"), capture_output=True, text=True, timeout=30, check=False
        )

    def start(self, timeout: float = 10.0) -> Nginx:
        with (self.directory / "stderr.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.error_log()}")
            try:
                httpx.get(self.http_url + "/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start:\n{self.error_log()}")

    def set_down(self, address: str, down: bool, timeout: float = 15.0) -> None:
        """Mark one upstream server `down` (or back up), reload, and wait for the old workers.

        With nginx (open source), this is how an instance leaves the rotation before it stops:
        after the reload no new request goes to it, and once the old workers have finished
        their requests in flight nothing reaches it at all.
        """
        assert self.proc is not None
        text = self.conf.read_text()
        pattern = rf"(server {re.escape(address)} [^;]*?)( down)?;"
        text, found = re.subn(pattern, lambda m: m.group(1) + (" down;" if down else ";"), text)
        assert found == 1, address
        self.conf.write_text(text)
        before = {child.pid for child in psutil.Process(self.proc.pid).children()}
        reload = subprocess.run(
            self.command("-s", "reload"), capture_output=True, text=True, timeout=30, check=False
        )
        assert reload.returncode == 0, reload.stderr
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = {child.pid for child in psutil.Process(self.proc.pid).children()}
            if children and not children & before:  # new workers up, old ones gone
                return
            time.sleep(0.05)
        raise AssertionError(f"nginx workers {before} did not finish after the reload")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def error_log(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def access_log(self) -> list[dict[str, Any]]:
        """The JSON access-log lines (format stalwart_json of deploy/nginx.conf)."""
        path = self.directory / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
