"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.prometheus_http import FakePrometheusServer


@pytest.fixture
def prometheus() -> Iterator[FakePrometheusServer]:
    fake = FakePrometheusServer()
    yield fake
    fake.close()
