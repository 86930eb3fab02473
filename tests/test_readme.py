"""The README's sample AgentRollout is what users copy first: it must parse and pass validation."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agent_rollout import api
from agent_rollout.validation import validate

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_sample_rollout_is_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    samples = [
        doc for doc in map(yaml.safe_load, blocks) if isinstance(doc, dict) and doc.get("kind") == api.KIND
    ]
    assert samples, "no AgentRollout sample in README.md"
    for sample in samples:
        assert sample["apiVersion"] == f"{api.GROUP}/{api.VERSION}"
        spec = api.parse_spec(sample["spec"])
        assert validate(spec) == []
