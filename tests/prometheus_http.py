"""A tiny local HTTP server that answers Prometheus' query API, for adapter and batching tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def loop_ticks_during(make: Callable[[], Awaitable[Any]]) -> int:
    """How often a 10 ms ticker ran on the event loop while `make()` was awaited.

    A slow answer awaited without blocking the loop lets the ticker run many times; a blocking call
    inside the awaitable freezes the loop and the count stays near zero.
    """

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await make()
        task.cancel()
        return ticks

    return asyncio.run(scenario())


# (status, JSON body, seconds to wait before answering) for a query
Responder = Callable[[str], tuple[int, Any, float]]


def vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"i": str(i)}, "value": [1700000000.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


class FakePrometheusServer:
    def __init__(self) -> None:
        self.respond: Responder = lambda query: (200, vector("1"), 0.0)
        # Answers /api/v1/format_query when set; None answers 404, as a Prometheus before 2.38 does.
        self.format_query: Responder | None = None
        self.queries: list[str] = []  # every query received, in order (list.append is thread-safe)
        self.paths: list[str] = []  # the path of each of those requests
        self.methods: list[str] = []  # and its method
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                self._answer(url.path, parse_qs(url.query).get("query", [""])[0], "GET")

            def do_POST(self) -> None:  # a long query comes as a form, as Prometheus also accepts
                form = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                self._answer(urlparse(self.path).path, parse_qs(form).get("query", [""])[0], "POST")

            def _answer(self, path: str, query: str, method: str) -> None:
                fake.queries.append(query)
                fake.paths.append(path)
                fake.methods.append(method)
                status, body, delay = 404, {}, 0.0
                if path == "/api/v1/query":
                    status, body, delay = fake.respond(query)
                elif path == "/api/v1/format_query" and fake.format_query is not None:
                    status, body, delay = fake.format_query(query)
                time.sleep(delay)
                payload = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up first: that is what the timeout tests want

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def series(*samples: tuple[dict[str, str], float | str]) -> dict[str, Any]:
    """An instant vector answer with these (labels, value) series."""
    result = [{"metric": labels, "value": [1700000000.0, str(value)]} for labels, value in samples]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}
