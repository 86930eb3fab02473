"""What ships: the image recipe, its lock file and the package metadata, checked without building an image."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every pin in requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match[1])
            pins[name] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def final_stage(dockerfile: str) -> list[str]:
    """The instructions after the last FROM (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


def test_every_runtime_dependency_is_locked_at_a_version_pyproject_allows() -> None:
    pins = locked()
    for spec in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock: bash scripts/lock.sh"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject.toml's {spec}: bash scripts/lock.sh"
        )


def test_every_locked_package_is_pinned_with_hashes_and_none_is_a_dev_tool() -> None:
    pins = locked()
    assert len(pins) >= len(PYPROJECT["project"]["dependencies"])
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []
    names = lambda specs: {canonicalize_name(Requirement(spec).name) for spec in specs}  # noqa: E731
    dev = names(PYPROJECT["project"]["optional-dependencies"]["dev"])
    runtime = names(PYPROJECT["project"]["dependencies"])
    # jsonpatch is a dev extra and also a dependency of kopf; the test tools must stay out of the image.
    assert sorted((dev - runtime - {"jsonpatch"}) & set(pins)) == []


def test_the_image_installs_only_the_lock_with_hashes_on_a_digest_pinned_base() -> None:
    text = DOCKERFILE.read_text()
    assert "--require-hashes" in text and "requirements.lock" in text
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert len(bases) == 1 and re.search(r"@sha256:[0-9a-f]{64}$", bases[0]), bases
    assert all(line.split()[1] in ("${PYTHON_IMAGE}",) for line in re.findall(r"^FROM .*", text, flags=re.M))


def test_the_final_stage_is_non_root_and_runs_the_operators_console_script() -> None:
    stage = final_stage(DOCKERFILE.read_text())
    assert not [line for line in stage if line.upper().startswith("RUN ")], "nothing built in the final stage"
    users = [line.split()[1] for line in stage if line.upper().startswith("USER ")]
    # Numeric: only then can the kubelet check runAsNonRoot.
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), users
    entrypoint = [line for line in stage if line.upper().startswith("ENTRYPOINT ")]
    assert entrypoint == ['ENTRYPOINT ["agent-rollout-operator"]']
    assert PYPROJECT["project"]["scripts"]["agent-rollout-operator"] == "agent_rollout.main:main"
    assert 'CMD ["--liveness=http://0.0.0.0:8080/healthz"]' in stage


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_declares_its_type_hints_and_license() -> None:
    assert (ROOT / "operator" / "agent_rollout" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["agent_rollout"]
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
