"""``angela-queue run --metrics-port PORT``: the supervisor's Prometheus endpoint.

It serves the queue's metrics (inspect/metrics.py: depth, outcomes, waits,
workers, SLA), and this supervisor's own: its scaling decisions and the
worker processes that exited without being asked.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, start_http_server

from ..errors import ConfigError
from ..inspect.metrics import registry_for


class SupervisorMetrics:
    def __init__(self, dsn: str):
        self.registry, self._queue = registry_for(dsn)
        self.decisions = Counter("angela_queue_scaling_decisions", "Scaling decisions of this supervisor",
                                 ["action"], registry=self.registry)
        self.worker_exits = Counter("angela_queue_worker_exits",
                                    "Worker processes of this supervisor that exited unasked",
                                    ["reason"], registry=self.registry)
        self._server = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> str:
        """Listen on host:port (0: a free port); returns the URL of /metrics."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound_host, bound_port = self._server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        return f"http://{shown}:{bound_port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._queue.close()
