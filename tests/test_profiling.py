"""The memory profile hook: off unless asked, and on SIGUSR2 it logs where the memory is."""

from __future__ import annotations

import gc
import logging
import os
import signal
import tracemalloc

import pytest

from agent_rollout import profiling


def test_sigusr2_logs_the_lines_holding_the_most_memory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(profiling.ENV, "1")
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        profiling.install()
        held = [bytearray(1024) for _ in range(2048)]  # 2 MiB on one line of this file
        with caplog.at_level(logging.WARNING, logger=profiling.__name__):
            os.kill(os.getpid(), signal.SIGUSR2)
        assert "traced" in caplog.text
        top = caplog.text.splitlines()[1]  # the line holding the most
        assert "test_profiling.py" in top, caplog.text
        del held
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGUSR2, previous)


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(profiling.ENV, raising=False)
    profiling.install()
    assert not tracemalloc.is_tracing()


def test_more_frames_log_the_call_path_that_holds_the_memory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(profiling.ENV, "4")
    previous = signal.getsignal(signal.SIGUSR2)

    def allocate() -> list[bytearray]:
        return [bytearray(1024) for _ in range(2048)]

    try:
        profiling.install()
        held = allocate()
        with caplog.at_level(logging.WARNING, logger=profiling.__name__):
            os.kill(os.getpid(), signal.SIGUSR2)
        lines = caplog.text.splitlines()
        top = next(i for i, line in enumerate(lines) if "MiB" in line and "blocks" in line)
        assert "test_profiling.py" in lines[top], caplog.text  # the allocating line, then who called it
        assert lines[top + 1].strip().startswith("from ") and "test_profiling.py" in lines[top + 1], (
            caplog.text
        )
        del held
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGUSR2, previous)


def test_the_young_generation_sampler_names_what_fills_it_and_where(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """5,000 lists made at one line and alive when the young generation is collected: the sampler's
    report puts them on top, with the line that made them (tracemalloc traces too)."""
    monkeypatch.setenv(profiling.GC_ENV, "1")
    monkeypatch.setenv(profiling.ENV, "1")
    previous = signal.getsignal(signal.SIGUSR2)
    enabled = gc.isenabled()
    try:
        profiling.install()
        gc.disable()  # all 5,000 in the young generation when it is collected
        held = [[i] for i in range(5000)]
        gc.collect(0)
        with caplog.at_level(logging.WARNING, logger=profiling.__name__):
            os.kill(os.getpid(), signal.SIGUSR2)
        lines = caplog.text.splitlines()
        start = next(i for i, line in enumerate(lines) if "young generation:" in line)
        top = lines[start + 1]
        count, kind, where = top.split()
        assert kind == "list" and "test_profiling.py" in where, caplog.text
        assert float(count) >= 4000, caplog.text  # a few without a traceback are tallied by type alone
        del held
    finally:
        if enabled:
            gc.enable()
        if profiling._sampler is not None:
            gc.callbacks.remove(profiling._sampler)
            profiling._sampler = None
        tracemalloc.stop()
        signal.signal(signal.SIGUSR2, previous)
