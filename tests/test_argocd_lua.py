"""The Argo CD health check and resource actions, run by a real Lua 5.1 interpreter.

Argo CD runs these scripts with gopher-lua (Lua 5.1) and the resource as the global `obj`; here
`lua5.1` (installed by scripts/install-system-deps.sh) runs them the same way, and a small encoder
written in Lua hands the returned table back as JSON.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_rollout.cli import VERBS, Outcome, advise

DOCS = Path(__file__).resolve().parents[1] / "docs" / "argocd"
PHASES = ["Pending", "Progressing", "Paused", "Promoted", "RolledBack", "Failed"]

ENCODE = r"""
local function encode(v)
  local t = type(v)
  if t == "table" then
    if #v > 0 then
      local items = {}
      for i = 1, #v do items[i] = encode(v[i]) end
      return "[" .. table.concat(items, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local items = {}
    for _, k in ipairs(keys) do items[#items + 1] = encode(k) .. ":" .. encode(v[k]) end
    return "{" .. table.concat(items, ",") .. "}"
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif t == "number" or t == "boolean" then
    return tostring(v)
  end
  error("cannot encode a " .. t)
end
"""


def to_lua(value: Any) -> str:
    """A Lua constructor for a JSON value, as Argo CD hands the resource to its scripts (null: nil)."""
    if isinstance(value, dict):
        fields = (f"[{to_lua(k)}]={to_lua(v)}" for k, v in value.items() if v is not None)
        return "{" + ",".join(fields) + "}"
    if isinstance(value, list):
        return "{" + ",".join(to_lua(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are Lua's for the characters used here
    raise TypeError(value)


@pytest.fixture(scope="module")
def lua() -> str:
    found = shutil.which("lua5.1")
    if found is None:
        pytest.fail("lua5.1 is missing: `make bootstrap` (scripts/install-system-deps.sh) installs it")
    return found


def run_lua(lua: str, script: str, obj: dict[str, Any]) -> Any:
    """Run an Argo CD script with `obj` as its global and return what it returns, as JSON."""
    program = (
        f"{ENCODE}\nobj = {to_lua(obj)}\nlocal function script()\n{script}\nend\nio.write(encode(script()))\n"
    )
    done = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def rollout(
    phase: str | None, generation: int = 2, observed: int | None = 2, **status: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "agentrollout.io/v1alpha1",
        "kind": "AgentRollout",
        "metadata": {"name": "triage", "namespace": "support", "generation": generation},
        "spec": {
            "legacy": {"deployment": "triage-v1"},
            "candidate": {"deployment": "triage-v2"},
            "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}],
        },
        "status": {"phase": phase, "observedGeneration": observed, **status} if phase else None,
    }


# ---------------------------------------------------------------- health


@pytest.fixture(scope="module")
def health() -> str:
    return (DOCS / "health.lua").read_text()


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Pending", "Progressing"),
        ("Progressing", "Progressing"),
        ("Paused", "Suspended"),
        ("Promoted", "Healthy"),
        ("RolledBack", "Degraded"),
        ("Failed", "Degraded"),
    ],
)
def test_health_of_a_current_status_follows_the_phase(
    lua: str, health: str, phase: str, expected: str
) -> None:
    said = run_lua(lua, health, rollout(phase, message=f"the {phase} message"))
    assert said == {"status": expected, "message": f"the {phase} message"}


def test_health_without_a_status_waits_for_the_operator(lua: str, health: str) -> None:
    assert run_lua(lua, health, rollout(None)) == {
        "status": "Progressing",
        "message": "Waiting for the operator",
    }


@pytest.mark.parametrize("phase", ["Promoted", "RolledBack", "Failed", "Paused"])
@pytest.mark.parametrize("observed", [1, None])
def test_health_of_a_status_older_than_the_spec_is_progressing(
    lua: str, health: str, phase: str, observed: int | None
) -> None:
    # The spec was edited (generation 2) and the operator has not reconciled it yet: the Promoted (or
    # RolledBack) status describes the previous spec, not this one.
    said = run_lua(lua, health, rollout(phase, generation=2, observed=observed, message="old news"))
    assert said == {"status": "Progressing", "message": "waiting for the operator to observe generation 2"}


# ---------------------------------------------------------------- actions


@pytest.fixture(scope="module")
def actions() -> dict[str, Any]:
    text = (DOCS / "actions.lua.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    parsed: dict[str, Any] = yaml.safe_load(block)
    return parsed


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the apiserver applies `kubectl agentrollout`'s patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


@pytest.mark.parametrize("phase", [None, *PHASES])
def test_each_action_changes_exactly_what_the_plugins_patch_changes(
    lua: str, actions: dict[str, Any], phase: str | None
) -> None:
    obj = rollout(phase)
    scripts = {d["name"]: d["action.lua"] for d in actions["definitions"]}
    assert set(scripts) == set(VERBS)
    for verb, fields in VERBS.items():
        by_argocd = run_lua(lua, scripts[verb], copy.deepcopy(obj))
        by_plugin = merge_patch(without_nulls(obj), {"status": fields})
        assert by_argocd == by_plugin, verb


@pytest.mark.parametrize("phase", [None, *PHASES])
def test_argocd_offers_a_verb_only_where_the_plugin_would_send_it(
    lua: str, actions: dict[str, Any], phase: str | None
) -> None:
    obj = rollout(phase)
    offered = run_lua(lua, actions["discovery.lua"], obj)
    assert set(offered) == set(VERBS)
    for verb in VERBS:
        sends = advise(verb, obj).outcome is Outcome.SEND
        enabled = not offered[verb].get("disabled", False)
        if verb == "promote":
            # The button is stricter than the plugin: Paused only, never a step still gathering evidence.
            assert enabled == (phase == "Paused") and (sends or not enabled), (verb, phase)
        else:
            assert enabled == sends, (verb, phase)


def test_abort_is_offered_on_a_promoted_rollout_and_the_docs_say_it_sends_everything_to_legacy(
    lua: str, actions: dict[str, Any]
) -> None:
    offered = run_lua(lua, actions["discovery.lua"], rollout("Promoted"))
    assert offered["abort"].get("disabled", False) is False
    text = " ".join((DOCS / "actions.lua.md").read_text().split())
    assert "abort on a Promoted rollout sends ALL traffic, 100%, back to the legacy Deployment" in text
