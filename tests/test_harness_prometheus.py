"""The harness' Prometheus: which binary it starts (E2E_PROMETHEUS) and the query log a benchmark turns
on and off (e2e/cluster/prometheus.py). A wrong binary must fail at once with its name, not as a
cluster that never gets ready; a query log left on would grow for the rest of a run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import prometheus


def test_debians_prometheus_unless_a_binary_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(prometheus.BINARY_ENV, raising=False)
    assert prometheus.prometheus_argv(tmp_path / "p.yml", tmp_path, 9090)[0] == "prometheus"

    built = tmp_path / "prometheus"
    built.write_text("#!/bin/sh\n")
    built.chmod(0o755)
    monkeypatch.setenv(prometheus.BINARY_ENV, str(built))
    assert prometheus.prometheus_argv(tmp_path / "p.yml", tmp_path, 9090)[0] == str(built)


@pytest.mark.parametrize("kind", ["missing", "not executable", "directory"])
def test_a_named_binary_that_cannot_run_is_refused_naming_the_variable(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    named = tmp_path / "prometheus"
    if kind == "not executable":
        named.write_text("#!/bin/sh\n")
    elif kind == "directory":
        named.mkdir()
    monkeypatch.setenv(prometheus.BINARY_ENV, str(named))
    with pytest.raises(RuntimeError, match=prometheus.BINARY_ENV):
        prometheus.prometheus_argv(tmp_path / "p.yml", tmp_path, 9090)


@pytest.fixture
def reloads() -> Iterator[tuple[str, list[str]]]:
    """A stand-in for Prometheus' lifecycle endpoint on loopback: (its URL, the paths POSTed to it)."""
    posted: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posted.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posted
    finally:
        server.shutdown()
        server.server_close()


def test_the_query_log_is_turned_on_and_off_with_a_reload_each(
    reloads: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, posted = reloads
    config = tmp_path / "prometheus.yml"
    prometheus.write_config(config, tmp_path / "file_sd")
    before = yaml.safe_load(config.read_text())

    prometheus.log_queries(config, url, tmp_path / "queries.jsonl")
    on = yaml.safe_load(config.read_text())
    assert on["global"]["query_log_file"] == str(tmp_path / "queries.jsonl")
    assert posted == ["/-/reload"]

    prometheus.log_queries(config, url, None)
    assert yaml.safe_load(config.read_text()) == before  # nothing else changed, on or off
    assert posted == ["/-/reload", "/-/reload"]
