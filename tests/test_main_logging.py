"""The operator's log lines are written off the event loop (main.log_off_the_loop)."""

from __future__ import annotations

import io
import logging
import re
import time

from agent_rollout.main import log_off_the_loop


class SlowStream(io.StringIO):
    """A stream whose every write takes 0.3 s, as a log file on a busy disk may."""

    def write(self, text: str) -> int:
        time.sleep(0.3)
        return super().write(text)


def test_a_log_line_does_not_wait_for_its_write_and_reads_as_before() -> None:
    stream = SlowStream()
    log = logging.getLogger("agent_rollout.test_main_logging")
    listener = log_off_the_loop(logging.INFO, stream, logger=log)  # as main() does for the root
    log.propagate = False
    try:
        started = time.monotonic()
        log.warning("gate %s breached", "error-rate")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("reconcile failed")
        took = time.monotonic() - started
    finally:
        listener.stop()  # writes what is queued
        for handler in log.handlers[:]:
            log.removeHandler(handler)
    assert took < 0.1, took  # two lines logged; their writes (0.3 s each) happened in the listener
    text = stream.getvalue()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    line = stamp + r"WARNING agent_rollout.test_main_logging: gate error-rate breached$"
    assert re.search(line, text, re.MULTILINE), text
    assert "ERROR agent_rollout.test_main_logging: reconcile failed" in text and "ValueError: boom" in text
    assert text.count("agent_rollout.test_main_logging") == 2  # each line formatted once
