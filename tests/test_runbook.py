"""docs/runbook.md cannot rot: every `kubectl agentrollout ...` command in it (and in the alert rules'
annotations) parses with the plugin's own argument parser, every alert of the chart's rules has a
section, and every verb on-call uses is shown."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from agent_rollout.cli import NAMED_VERBS, build_parser

REPO = Path(__file__).resolve().parents[1]
RUNBOOK = REPO / "docs" / "runbook.md"
RULES = REPO / "charts" / "agent-rollout" / "files" / "agent-rollout.rules.yml"
# Commands are code: a line of a fenced block, or an inline `code span`.
FENCED = re.compile(r"^ *```\w*\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"kubectl agentrollout\b[^\n]*")
# Verbs an incident may need; `baseline` records a measurement and is no incident tool.
INCIDENT_VERBS = frozenset(NAMED_VERBS) - {"baseline"}


def alerts() -> list[dict[str, object]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def commands(text: str) -> list[str]:
    code = [block for block in FENCED.findall(text)]
    code += SPAN.findall(FENCED.sub("", text))
    found = []
    for piece in code:
        # A comment after a command in a shell block is not part of it.
        found += [m.group(0).split("  #")[0].strip() for m in COMMAND.finditer(piece)]
    return found


def refusal(command: str) -> str | None:
    """Why the plugin would refuse `command` before doing anything, or None."""
    words = shlex.split(command)[2:]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(words)
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1]
    if args.verb != "version" and args.name is None:
        return f"{args.verb} needs the name of an AgentRollout"
    return None


def in_rules() -> list[str]:
    found = []
    for alert in alerts():
        for text in dict(alert.get("annotations") or {}).values():  # type: ignore[call-overload]
            found += commands(
                re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: m.group(1).upper(), str(text))
            )
    return found


@pytest.mark.parametrize("command", sorted({*commands(RUNBOOK.read_text()), *in_rules()}))
def test_every_plugin_command_of_the_runbook_and_the_alerts_parses(command: str) -> None:
    assert refusal(command) is None, f"{command!r}: {refusal(command)}"


def test_the_check_refuses_a_command_the_plugin_does_not_know() -> None:
    assert refusal("kubectl agentrollout rewind NAME -n NAMESPACE")  # no such verb
    assert refusal("kubectl agentrollout retry")  # no rollout named
    assert refusal("kubectl agentrollout abort NAME --force")  # no such flag


def test_every_alert_of_the_chart_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE))
    names = [str(alert["alert"]) for alert in alerts()]
    assert names, "no alerts found in the rules file"
    assert [n for n in names if n not in headings] == []


def test_every_incident_verb_of_the_plugin_is_in_the_runbook() -> None:
    shown = {shlex.split(c)[2] for c in commands(RUNBOOK.read_text()) if len(shlex.split(c)) > 2}
    assert sorted(INCIDENT_VERBS - shown) == []
