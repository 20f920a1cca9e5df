"""`python -m angela_queue --dsn DSN dashboard --port 0` as a real server
process, and the URL (and token) it prints; read and POSTed over HTTP
exactly as the page does."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

STARTUP_S = 20.0


class Dashboard:
    def __init__(self, dsn: str, *args: str, log_dir: Path, env: dict[str, str] | None = None):
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("ANGELA_QUEUE_DASHBOARD_") and k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")}
        full_env.update(env or {})
        self.log_path = log_dir / f"dashboard-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "angela_queue", "--dsn", dsn, "dashboard", *args],
                                     stdout=subprocess.PIPE, stderr=self._log, env=full_env, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=STARTUP_S)
        except queue.Empty:
            self.close()
            raise AssertionError(f"the dashboard printed no URL within {STARTUP_S}s\n{self.log()}") from None
        self.line = line.rstrip("\n")
        match = re.search(r"(http://\S+/)(#token=(\S+))?", line)
        assert match, f"no URL in {line!r}\n{self.log()}"
        self.url = match.group(1)
        self.printed_url = match.group(0)
        self.token = match.group(3) or full_env.get("ANGELA_QUEUE_DASHBOARD_TOKEN")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path.lstrip("/"), data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path)

    def get_json(self, path: str) -> tuple[int, dict]:
        status, headers, body = self.get(path)
        assert headers["Content-Type"] == "application/json", (status, body)
        return status, json.loads(body)

    def post(self, path: str, data: dict | None = None, token: str | None | bool = True) -> tuple[int, dict]:
        """POST JSON; token True: the dashboard's own, a string: that one, None: no Authorization."""
        headers = {"Content-Type": "application/json"}
        given = self.token if token is True else token
        if given:
            headers["Authorization"] = f"Bearer {given}"
        status, resp_headers, body = self.request("POST", path, json.dumps(data or {}).encode(), headers)
        assert resp_headers["Content-Type"] == "application/json", (status, body)
        return status, json.loads(body)

    def stats(self) -> tuple[int, dict]:
        return self.get_json("/api/stats")

    def ok_stats(self) -> dict:
        status, data = self.stats()
        assert status == 200 and data["ok"], data
        return data

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the dashboard did not stop within {timeout}s\n{self.log()}") from None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def start_dashboard(tmp_path: Path):
    started: list[Dashboard] = []

    def start(dsn: str, *args: str, env: dict[str, str] | None = None) -> Dashboard:
        board = Dashboard(dsn, *(args or ("--port", "0")), log_dir=tmp_path, env=env)
        started.append(board)
        return board

    yield start
    for board in started:
        board.close()




