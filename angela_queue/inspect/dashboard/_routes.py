"""A small router: (method, path pattern) -> handler, so a route is one line.

A handler takes a Request and returns a Response, or raises ApiError for a
JSON error with its HTTP status. Patterns are regular expressions matched
against the whole path; named groups become ``request.params``. Adding a
route (``/metrics``, say) is ``router.add("GET", "/metrics", handler)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from ._collector import dumps

# The largest request body read (the bulk retry's JSON is a few dozen bytes).
MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    """An error the API answers as ``{"ok": false, "error": message}`` with this status."""

    def __init__(self, http_status: int, message: str, /, **extra: Any):
        super().__init__(message)
        self.status = http_status
        self.message = message
        self.extra = extra

    def response(self) -> "Response":
        return Response.json({"ok": False, "error": self.message, **self.extra}, self.status)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        """A query-string argument; empty counts as absent."""
        values = self.query.get(name)
        return values[-1] if values and values[-1] != "" else None

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Mapping[str, Any], status: int = 200) -> "Response":
        return cls(status, "application/json", dumps(data))

    @classmethod
    def text(cls, text: str, status: int = 200) -> "Response":
        return cls(status, "text/plain; charset=utf-8", text.encode())


Handler = Callable[[Request], Response]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method.upper(), re.compile(pattern), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler for a request; ApiError 404 (no such path) or 405 (not that method)."""
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method == method or (method == "HEAD" and route_method == "GET"):
                return handler, match.groupdict()
            allowed.append(route_method)
        if allowed:
            raise ApiError(405, f"{method} is not allowed here (allowed: {', '.join(sorted(set(allowed)))})")
        raise ApiError(404, f"no such page: {path}")


def parse_query(query: str) -> dict[str, list[str]]:
    return parse_qs(query, keep_blank_values=True)
