"""`kubectl agentrollout`, run in-process against a small HTTP server that answers as the apiserver does.

The plugin goes through the real kubernetes client and a real kubeconfig file, so namespace
resolution, the exact request sent (path, patch type, body) and the rendering of error responses
are all observed from the outside: what the user reads, the exit code, and what reached the server.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_rollout.cli import Outcome, advise, complete_main, complete_words, main, render
from tests.specs import analysis_dict, spec_dict

ERROR_RATE_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.01}

BASE = "/apis/agentrollout.io/v1alpha1/namespaces"


@dataclass
class Request:
    method: str
    path: str
    content_type: str | None
    body: Any


@dataclass
class FakeApiServer:
    """Answers (method, path) from `responses`; anything else is the apiserver's plain 404."""

    url: str
    responses: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def rollout(self, namespace: str, name: str, phase: str | None = None, **status: Any) -> dict[str, Any]:
        """Serve one AgentRollout at GET and accept merge patches of its status."""
        obj: dict[str, Any] = {
            "apiVersion": "agentrollout.io/v1alpha1",
            "kind": "AgentRollout",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {
                "legacy": {"deployment": "triage-v1"},
                "candidate": {"deployment": "triage-v2"},
                "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}],
            },
            "status": {"phase": phase, **status} if phase else {},
        }
        path = f"{BASE}/{namespace}/agentrollouts/{name}"
        self.responses[("GET", path)] = (200, obj)
        self.responses[("PATCH", f"{path}/status")] = (200, obj)
        return obj

    def patches(self) -> list[Request]:
        return [r for r in self.requests if r.method == "PATCH"]


def status_error(code: int, reason: str, message: str, name: str | None = None) -> dict[str, Any]:
    """The Status object the apiserver sends with an error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name is not None:
        body["details"] = {"name": name, "group": "agentrollout.io", "kind": "agentrollouts"}
    return body


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            body = json.loads(raw) if raw else None
            fake.requests.append(Request(self.command, path, self.headers.get("Content-Type"), body))
            code, answer = fake.responses.get((self.command, path), (404, "404 page not found"))
            data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = _answer

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def write_kubeconfig(
    path: Path, server: str, contexts: dict[str, str | None], current: str | None = None
) -> Path:
    """A kubeconfig whose contexts all point at `server`, each with its namespace (None: no namespace)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [
            {"name": name, "context": {"cluster": "local", "user": "me", **({"namespace": ns} if ns else {})}}
            for name, ns in contexts.items()
        ],
        "current-context": current or next(iter(contexts)),
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    monkeypatch.delenv("KUBECONFIG", raising=False)

    def _run(*argv: str) -> Ran:
        code = main(list(argv))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Ran(code, captured.out, captured.err)

    return _run


# ---------------------------------------------------------------- the namespace


def test_without_n_the_namespace_is_the_current_contexts(
    server: FakeApiServer, run: Callable[..., Ran], tmp_path: Path
) -> None:
    config = write_kubeconfig(tmp_path / "config", server.url, {"prod": "support", "dev": "sandbox"})
    server.rollout("support", "triage", "Progressing")

    ran = run("status", "triage", "--kubeconfig", str(config))

    assert ran.code == 0, ran.err
    assert ran.out.startswith("support/triage  phase=Progressing")
    assert [r.path for r in server.requests] == [f"{BASE}/support/agentrollouts/triage"]


def test_context_flag_picks_that_contexts_namespace(
    server: FakeApiServer, run: Callable[..., Ran], tmp_path: Path
) -> None:
    config = write_kubeconfig(tmp_path / "config", server.url, {"prod": "support", "dev": "sandbox"})
    server.rollout("sandbox", "triage", "Paused")

    ran = run("status", "triage", "--kubeconfig", str(config), "--context", "dev")

    assert ran.code == 0, ran.err
    assert ran.out.startswith("sandbox/triage  phase=Paused")


def test_a_context_without_namespace_means_default_and_n_wins_over_the_context(
    server: FakeApiServer, run: Callable[..., Ran], tmp_path: Path
) -> None:
    config = write_kubeconfig(tmp_path / "config", server.url, {"bare": None, "prod": "support"})
    server.rollout("default", "triage", "Progressing")
    server.rollout("elsewhere", "triage", "Promoted")

    assert run("status", "triage", "--kubeconfig", str(config)).out.startswith("default/triage")
    explicit = run("status", "triage", "--kubeconfig", str(config), "--context", "prod", "-n", "elsewhere")
    assert explicit.out.startswith("elsewhere/triage  phase=Promoted")


def test_kubeconfig_environment_variable_is_read_when_the_plugin_runs(
    server: FakeApiServer, run: Callable[..., Ran], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubectl hands its plugins KUBECONFIG, not --kubeconfig; the client library reads it only at import.
    config = write_kubeconfig(tmp_path / "config", server.url, {"prod": "support"})
    server.rollout("support", "triage", "Progressing")
    monkeypatch.setenv("KUBECONFIG", str(config))

    ran = run("status", "triage")

    assert ran.code == 0, ran.err
    assert ran.out.startswith("support/triage")


def test_unknown_context_and_missing_kubeconfig_are_one_line_errors(
    server: FakeApiServer, run: Callable[..., Ran], tmp_path: Path
) -> None:
    config = write_kubeconfig(tmp_path / "config", server.url, {"prod": "support"})

    unknown = run("status", "triage", "--kubeconfig", str(config), "--context", "staging")
    missing = run("status", "triage", "--kubeconfig", str(tmp_path / "nope"))

    assert (unknown.code, unknown.err) == (1, "error: kubeconfig: no context named staging\n")
    assert (
        missing.code == 1 and missing.err.startswith("error: kubeconfig: ") and missing.err.count("\n") == 1
    )
    assert server.requests == []


# ---------------------------------------------------------------- API errors


@pytest.fixture
def config(server: FakeApiServer, tmp_path: Path) -> str:
    return str(write_kubeconfig(tmp_path / "config", server.url, {"prod": "support"}))


@pytest.mark.parametrize("verb", ["status", "abort", "promote", "retry"])
def test_a_missing_rollout_is_named_with_its_namespace(
    server: FakeApiServer, run: Callable[..., Ran], config: str, verb: str
) -> None:
    server.responses[("GET", f"{BASE}/support/agentrollouts/triage")] = (
        404,
        status_error(404, "NotFound", 'agentrollouts.agentrollout.io "triage" not found', name="triage"),
    )

    ran = run(verb, "triage", "--kubeconfig", config)

    assert (ran.code, ran.out) == (1, "")
    assert ran.err == "error: agentrollout triage not found in namespace support\n"
    assert server.patches() == []


def test_a_cluster_without_the_crd_says_so(
    server: FakeApiServer, run: Callable[..., Ran], config: str
) -> None:
    ran = run("status", "triage", "--kubeconfig", config)  # the server's plain "404 page not found"

    assert ran.code == 1
    assert ran.err == (
        "error: the API server does not serve agentrollouts.agentrollout.io/v1alpha1 (404 page not found): "
        "is the AgentRollout CRD installed?\n"
    )


def test_forbidden_patch_shows_the_apiservers_reason(
    server: FakeApiServer, run: Callable[..., Ran], config: str
) -> None:
    server.rollout("support", "triage", "Progressing")
    reason = (
        'agentrollouts.agentrollout.io "triage" is forbidden: User "dev" cannot patch resource '
        '"agentrollouts/status" in API group "agentrollout.io" in the namespace "support"'
    )
    server.responses[("PATCH", f"{BASE}/support/agentrollouts/triage/status")] = (
        403,
        status_error(403, "Forbidden", reason, name="triage"),
    )

    ran = run("abort", "triage", "--kubeconfig", config)

    assert (ran.code, ran.out) == (1, "")
    assert ran.err == f"error: forbidden: {reason}\n"


def test_invalid_patch_and_unexpected_statuses_are_one_line(
    server: FakeApiServer, run: Callable[..., Ran], config: str
) -> None:
    server.rollout("support", "triage", "Paused")
    patch_path = f"{BASE}/support/agentrollouts/triage/status"
    invalid = 'AgentRollout.agentrollout.io "triage" is invalid: status.promote: Invalid value: "string"'
    server.responses[("PATCH", patch_path)] = (422, status_error(422, "Invalid", invalid, name="triage"))
    rejected = run("promote", "triage", "--kubeconfig", config)

    server.responses[("PATCH", patch_path)] = (500, status_error(500, "InternalError", "etcdserver: timeout"))
    broken = run("promote", "triage", "--kubeconfig", config)

    server.responses[("PATCH", patch_path)] = (401, status_error(401, "Unauthorized", "Unauthorized"))
    stranger = run("promote", "triage", "--kubeconfig", config)

    assert (rejected.code, rejected.err) == (1, f"error: invalid: {invalid}\n")
    assert (broken.code, broken.err) == (1, "error: 500 Internal Server Error: etcdserver: timeout\n")
    assert (stranger.code, stranger.err) == (
        1,
        "error: unauthorized: Unauthorized (check the credentials in your kubeconfig)\n",
    )


def test_connection_refused_is_one_line_naming_the_server(run: Callable[..., Ran], tmp_path: Path) -> None:
    # A bound socket that never listens: connecting to it is refused, at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        config = write_kubeconfig(tmp_path / "config", url, {"prod": "support"})

        ran = run("abort", "triage", "--kubeconfig", str(config))

    assert (ran.code, ran.out) == (1, "")
    assert ran.err.startswith(f"error: cannot reach the Kubernetes API at {url}: ")
    assert "Connection refused" in ran.err and ran.err.count("\n") == 1
    assert ran.err.count("127.0.0.1") == 1  # urllib3's repr of the connection, which repeats it, is dropped


# ---------------------------------------------------------------- verbs by phase


@pytest.mark.parametrize(
    ("verb", "phase", "says"),
    [
        ("abort", "Progressing", "abort requested: all traffic goes back to legacy triage-v1"),
        ("abort", "Paused", "abort requested: all traffic goes back to legacy triage-v1"),
        ("abort", "Pending", "abort requested"),
        (
            "abort",
            "Promoted",
            "abort requested: it is Promoted, so ALL traffic goes back to legacy triage-v1",
        ),
        ("promote", "Paused", "promote requested: ends the pause at step 2/3"),
        ("promote", "Progressing", "promote requested: ends step 2/3 now"),
        ("retry", "RolledBack", "retry requested: candidate triage-v2 restarts from step 1/3"),
    ],
)
def test_a_verb_that_applies_is_one_merge_patch_of_the_status(
    server: FakeApiServer, run: Callable[..., Ran], config: str, verb: str, phase: str, says: str
) -> None:
    server.rollout("support", "triage", phase, currentStep=1, weights={"legacy": 90, "candidate": 10})

    ran = run(verb, "triage", "--kubeconfig", config)

    assert (ran.code, ran.err) == (0, "")
    assert ran.out.startswith(f"agentrollout support/triage: {says}"), ran.out
    # Exactly what an Argo CD action or `kubectl patch --subresource=status --type=merge` sends.
    [patch] = server.patches()
    assert patch.path == f"{BASE}/support/agentrollouts/triage/status"
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"status": {verb: True}}


def test_abort_of_a_promoted_rollout_says_the_candidate_loses_all_its_traffic(
    server: FakeApiServer, run: Callable[..., Ran], config: str
) -> None:
    server.rollout("support", "triage", "Promoted", currentStep=3, weights={"legacy": 0, "candidate": 100})

    ran = run("abort", "triage", "--kubeconfig", config)

    assert ran.code == 0
    assert "(candidate triage-v2 drops from 100% to 0%)" in ran.out


@pytest.mark.parametrize("phase", ["RolledBack", "Failed"])
def test_abort_of_a_rolled_back_or_failed_rollout_has_nothing_to_do_and_sends_nothing(
    server: FakeApiServer, run: Callable[..., Ran], config: str, phase: str
) -> None:
    server.rollout("support", "triage", phase)

    ran = run("abort", "triage", "--kubeconfig", config)

    assert (ran.code, ran.err) == (0, "")
    assert ran.out == (
        f"agentrollout support/triage is already {phase}: all traffic already goes to legacy triage-v1; "
        "nothing to do\n"
    )
    assert server.patches() == []


@pytest.mark.parametrize(
    ("verb", "phase", "why"),
    [
        ("retry", "Progressing", "it is Progressing, and retry only restarts a RolledBack rollout"),
        ("retry", "Paused", "it is Paused, and retry only restarts a RolledBack rollout"),
        ("retry", "Pending", "it is Pending, and retry only restarts a RolledBack rollout"),
        ("retry", "Promoted", "to roll out another version, change Deployment triage-v2"),
        ("retry", "Failed", "a Failed rollout restarts by itself once its spec is valid"),
        ("promote", "Promoted", "it is already Promoted"),
        ("promote", "RolledBack", "it is RolledBack; `kubectl agentrollout retry` restarts it"),
        ("promote", "Failed", "it is Failed (invalid spec)"),
        ("promote", None, "it is Pending: the operator has not started it yet"),
    ],
)
def test_a_verb_the_operator_would_ignore_is_refused_naming_the_phase(
    server: FakeApiServer, run: Callable[..., Ran], config: str, verb: str, phase: str | None, why: str
) -> None:
    server.rollout("support", "triage", phase)

    ran = run(verb, "triage", "--kubeconfig", config)

    assert (ran.code, ran.out) == (1, "")
    assert ran.err.startswith(f"error: cannot {verb} agentrollout support/triage: "), ran.err
    assert why in ran.err and ran.err.count("\n") == 1
    assert server.patches() == []


def test_version_prints_the_installed_package_version_without_a_cluster(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    # No kubeconfig at all: version must not read one.
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"kubectl-agentrollout {metadata.version('agent-rollout')}\n"


def test_a_verb_without_a_rollout_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["abort"])
    assert exited.value.code == 2
    assert "abort needs the name of an AgentRollout" in capsys.readouterr().err


# ---------------------------------------------------------------- shell completion


def no_rollouts(namespace: str | None, kubeconfig: str | None, context: str | None) -> list[str]:
    raise AssertionError("verbs complete without the cluster")


def test_the_first_word_completes_to_the_verbs() -> None:
    assert complete_words([""], no_rollouts) == [
        "status",
        "history",
        "report",
        "approve",
        "abort",
        "promote",
        "retry",
        "baseline",
        "drill",
        "version",
    ]
    assert complete_words(["pro"], no_rollouts) == ["promote"]
    assert complete_words(["-n", "support", "ret"], no_rollouts) == ["retry"]
    assert complete_words(["-n", "support", "re"], no_rollouts) == ["report", "retry"]


def test_the_second_word_completes_to_the_rollouts_of_the_chosen_namespace() -> None:
    asked: list[tuple[str | None, str | None, str | None]] = []

    def names(namespace: str | None, kubeconfig: str | None, context: str | None) -> list[str]:
        asked.append((namespace, kubeconfig, context))
        return ["triage", "billing", "trivia"]

    words = ["abort", "-n", "support", "--context", "prod", "tri"]
    assert complete_words(words, names) == ["triage", "trivia"]
    assert asked == [("support", None, "prod")]
    assert complete_words(["version", ""], names) == []  # version takes no name
    assert complete_words(["abort", "-n", ""], names) == []  # a namespace is not a rollout name


def test_completion_lists_names_from_the_cluster_and_says_no_file_completion(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [server.rollout("support", name) for name in ("triage", "billing")]
    server.responses[("GET", f"{BASE}/support/agentrollouts")] = (200, {"items": items})
    kubeconfig = write_kubeconfig(tmp_path / "config", server.url, {"ctx": "support"})
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert complete_main(["status", ""]) == 0
    assert capsys.readouterr().out == "billing\ntriage\n:4\n"
    # An unreachable cluster: no candidates and no traceback in the user's shell.
    write_kubeconfig(kubeconfig, "http://127.0.0.1:1", {"ctx": "support"})
    assert complete_main(["status", ""]) == 0
    assert capsys.readouterr() == (":4\n", "")


# ---------------------------------------------------------------- baseline on demand


def measured(server: FakeApiServer, phase: str | None, candidate: int = 10, **status: Any) -> dict[str, Any]:
    """A rollout with an analysis section (the baseline is measured with its Prometheus)."""
    weights = {"legacy": 100 - candidate, "candidate": candidate}
    obj = server.rollout("support", "triage", phase, currentStep=1, weights=weights, **status)
    obj["spec"] = spec_dict(analysis=analysis_dict(ERROR_RATE_GATE))
    return obj


@pytest.mark.parametrize(("phase", "candidate"), [("Progressing", 10), ("Paused", 10), ("Promoted", 100)])
def test_baseline_is_one_merge_patch_of_record_baseline_where_both_versions_have_traffic(
    server: FakeApiServer, run: Callable[..., Ran], config: str, phase: str, candidate: int
) -> None:
    measured(server, phase, candidate, candidateRevision="abc123")

    ran = run("baseline", "triage", "--kubeconfig", config)

    assert (ran.code, ran.err) == (0, "")
    assert ran.out.startswith(
        "agentrollout support/triage: baseline requested: candidate revision abc123 against legacy"
    ), ran.out
    [patch] = server.patches()
    assert patch.path == f"{BASE}/support/agentrollouts/triage/status"
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"status": {"recordBaseline": True}}


@pytest.mark.parametrize(
    ("phase", "candidate", "analysis", "why"),
    [
        (None, 0, True, "it is Pending: a baseline compares a candidate serving traffic with legacy"),
        ("RolledBack", 0, True, "it is RolledBack"),
        ("Failed", 0, True, "it is Failed"),
        ("Progressing", 0, True, "the candidate takes no traffic at step 2 (weight 0)"),
        ("Promoted", 100, False, "the spec has no analysis section"),
    ],
)
def test_baseline_without_candidate_and_legacy_traffic_to_compare_is_refused(
    server: FakeApiServer,
    run: Callable[..., Ran],
    config: str,
    phase: str | None,
    candidate: int,
    analysis: bool,
    why: str,
) -> None:
    obj = measured(server, phase, candidate)
    if not analysis:
        obj["spec"].pop("analysis")

    ran = run("baseline", "triage", "--kubeconfig", config)

    assert (ran.code, ran.out) == (1, "")
    assert ran.err.startswith("error: cannot record a baseline of agentrollout support/triage: "), ran.err
    assert why in ran.err and ran.err.count("\n") == 1
    assert server.patches() == []


# ---------------------------------------------------------------- rollback drill


@pytest.mark.parametrize(
    ("args", "request_"),
    [
        ((), {"stayRolledBack": False}),
        (("--stay-rolled-back", "--bound", "5m"), {"stayRolledBack": True, "bound": "5m"}),
    ],
)
def test_drill_is_one_merge_patch_of_status_drill_with_its_options(
    server: FakeApiServer,
    run: Callable[..., Ran],
    config: str,
    args: tuple[str, ...],
    request_: dict[str, Any],
) -> None:
    measured(server, "Progressing", 25)

    ran = run("drill", "triage", *args, "--kubeconfig", config)

    assert (ran.code, ran.err) == (0, "")
    assert ran.out.startswith("agentrollout support/triage: drill requested: all traffic goes to legacy"), (
        ran.out
    )
    assert ("stays RolledBack" in ran.out) == ("--stay-rolled-back" in args)
    assert f"within {request_.get('bound', '15m')}" in ran.out
    [patch] = server.patches()
    assert patch.path == f"{BASE}/support/agentrollouts/triage/status"
    assert patch.body == {"status": {"drill": request_}}


@pytest.mark.parametrize(
    ("phase", "candidate", "status", "why"),
    [
        ("Progressing", 0, {}, "a drill rehearses the rollback from a weighted step"),
        ("RolledBack", 0, {}, "it is RolledBack"),
        ("Promoted", 100, {}, "it is Promoted"),
        (
            "Paused",
            25,
            {"lastDrill": {"result": "Running", "startedAt": "2026-03-01T12:00:00Z"}},
            "already running",
        ),
    ],
)
def test_drill_where_no_drill_can_run_is_refused_without_a_patch(
    server: FakeApiServer,
    run: Callable[..., Ran],
    config: str,
    phase: str,
    candidate: int,
    status: dict[str, Any],
    why: str,
) -> None:
    measured(server, phase, candidate, **status)

    ran = run("drill", "triage", "--kubeconfig", config)

    assert (ran.code, ran.out) == (1, "")
    assert ran.err.startswith("error: cannot drill agentrollout support/triage") and why in ran.err, ran.err
    assert server.patches() == []


def test_drill_with_a_bound_that_is_no_duration_is_refused(
    server: FakeApiServer, run: Callable[..., Ran], config: str
) -> None:
    measured(server, "Progressing", 25)
    ran = run("drill", "triage", "--bound", "15 minutes", "--kubeconfig", config)
    assert ran.code == 1 and "is not a duration" in ran.err
    assert server.patches() == []


def test_abort_during_a_rollback_waiting_for_legacy_capacity_is_sent() -> None:
    obj = {
        "metadata": {"namespace": "support", "name": "triage"},
        "spec": {"legacy": {"deployment": "v1"}, "candidate": {"deployment": "v2"}},
        "status": {
            "phase": "RolledBack",
            "weights": {"legacy": 50, "candidate": 50},
            "capacityRollback": {"required": 4, "ready": 2},
        },
    }
    advice = advise("abort", obj)
    assert advice.outcome is Outcome.SEND and "sends all traffic to legacy now" in advice.text
    obj["status"].pop("capacityRollback")
    assert advise("abort", obj).outcome is Outcome.NOTHING_TO_DO


def test_status_shows_the_latest_drill_in_one_line() -> None:
    obj = {
        "metadata": {"namespace": "support", "name": "triage"},
        "spec": {"steps": [{"setWeight": 25}]},
        "status": {
            "phase": "Progressing",
            "lastDrill": {
                "result": "Passed",
                "startedAt": "2026-03-01T12:00:00Z",
                "routeSeconds": 2,
                "confirmSeconds": 41,
                "bound": "15m",
                "message": "legacy confirmed within every drill gate",
            },
        },
    }
    assert (
        "drill=Passed started 2026-03-01T12:00:00Z  route at legacy 100: 2s  confirmed: 41s  bound 15m  "
        "legacy confirmed within every drill gate"
    ) in render(obj)
    obj["status"].pop("lastDrill")
    assert "drill=" not in render(obj)


def _recorded() -> dict[str, Any]:
    decision = {
        "time": "2026-03-01T12:00:00Z",
        "reason": "ApprovalGiven",
        "message": "approval 1/1 of step 2/3 by alice for candidate revision agent-1: looks good",
        "step": 1,
        "weights": {"legacy": 90, "candidate": 10},
        "actor": "alice",
        "actorGroups": ["release-managers", "system:authenticated"],
        "agentVersion": {"image": "acme/triage:2", "model": "gpt-x", "prompt": "unknown", "tools": "unknown"},
    }
    return {
        "metadata": {"name": "triage", "namespace": "agents"},
        "spec": {"steps": [{"setWeight": 10}, {"approval": {"approvers": {"users": ["alice"]}}}]},
        "status": {
            "phase": "Paused",
            "currentStep": 1,
            "candidateRevision": "agent-1",
            "history": [decision],
        },
    }


def test_history_prints_who_decided_about_which_agent() -> None:
    from agent_rollout import history

    header, row = history.history_table(_recorded()).splitlines()
    assert header.split() == [
        "TIME",
        "STEP",
        "REASON",
        "ACTOR",
        "IMAGE",
        "MODEL",
        "PROMPT",
        "TOOLS",
        "MESSAGE",
    ]
    assert "alice (release-managers)" in row and "acme/triage:2" in row and "gpt-x" in row
    assert row.split()[:3] == ["2026-03-01T12:00:00Z", "2", "ApprovalGiven"]
    (entry,) = json.loads(history.history_json(_recorded()))
    assert (entry["agentrollout"], entry["actor"], entry["agentVersion"]["model"]) == (
        "triage",
        "alice",
        "gpt-x",
    )


def test_approve_names_the_revision_it_approves_and_never_the_approver() -> None:
    from agent_rollout import history

    patch = history.approve_patch(_recorded(), "looks good")
    assert patch == {"status": {"requests": {"approve": {"reason": "looks good", "revision": "agent-1"}}}}
    assert history.approve_refusal(_recorded()) is None
    elsewhere = {**_recorded(), "status": {"phase": "Paused", "currentStep": 0}}
    assert "not an approval step" in (history.approve_refusal(elsewhere) or "")
    done = {**_recorded(), "status": {"phase": "Promoted", "currentStep": 2}}
    assert "Promoted" in (history.approve_refusal(done) or "")


def test_a_verb_retries_the_503_of_an_apiserver_that_has_not_loaded_the_crd_schema_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes.client.exceptions import ApiException

    from agent_rollout import cli

    class Custom:
        def __init__(self, failures: int, status: int = 503) -> None:
            self.failures, self.status, self.bodies = failures, status, []

        def patch_namespaced_custom_object_status(self, *args: Any) -> None:
            self.bodies.append(args[-1])
            if len(self.bodies) <= self.failures:
                raise ApiException(status=self.status)

    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    starting = Custom(failures=2)
    cli._patch_status(starting, "ns", "triage", {"status": {"abort": True}})
    assert len(starting.bodies) == 3
    refused = Custom(failures=1, status=403)
    with pytest.raises(ApiException):
        cli._patch_status(refused, "ns", "triage", {"status": {"abort": True}})
    assert len(refused.bodies) == 1  # a refusal is not retried


def test_promote_is_refused_on_an_approval_step() -> None:
    obj = {
        "metadata": {"name": "triage", "namespace": "agents"},
        "spec": {"steps": [{"setWeight": 10}, {"approval": {"approvers": {"users": ["alice"]}}}]},
        "status": {"phase": "Paused", "currentStep": 1},
    }
    advice = advise("promote", obj)
    assert advice.outcome is Outcome.REFUSE and "kubectl agentrollout approve" in advice.text
