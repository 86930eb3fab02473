"""`kubectl agentrollout ...`: the kubectl plugin. It only reads and patches.

Every verb is a plain merge patch on the status subresource, so Argo CD actions, this plugin and a
human with `kubectl patch --subresource=status --type=merge` all do exactly the same thing:

    abort    {"status": {"abort": true}}     roll back to legacy now (from Promoted too: ALL traffic
                                             goes back to legacy)
    promote  {"status": {"promote": true}}   end the current step or pause (human approval)
    retry    {"status": {"retry": true}}     restart a rolled-back rollout from step 1, same candidate
    baseline {"status": {"recordBaseline": true}}
                                             record the candidate revision's baseline against legacy
                                             now (Progressing or Paused with candidate traffic, or
                                             Promoted); it is also recorded at every promotion
    drill [--stay-rolled-back] [--bound 15m]
             {"status": {"drill": {"stayRolledBack": false, "bound": "15m"}}}
                                             rehearse a rollback at a weighted step: all traffic to
                                             legacy until legacy's own metrics confirm it within the
                                             bound (default spec.readiness.criteria.maxRollbackTime),
                                             then back to the same step (or stay RolledBack); a drill
                                             that fails stays on legacy (status.lastDrill)

Before patching, the plugin reads the rollout and says what the verb will do in its phase, or
refuses a verb the operator would consume without effect (retry outside RolledBack, promote of a
rollout that has no step left to end, baseline with no candidate and legacy traffic to compare).
That check is advisory: the phase can change between the read and the patch, and the operator's
rules stay the only authority on what a verb does.

    approve  {"status": {"requests": {"approve": {"reason": "...", "revision": "<candidateRevision>"}}}}
                                             approve the candidate revision at an approval step
                                             (--reason); the apiserver's admission stamps who you are

Every verb takes --reason "...", kept with the request in status.requests.<verb>; the chart's
admission policies stamp the authenticated user and groups there, and the operator records them as
the decision's actor. `history NAME [-o json]` prints status.history: time, step, reason, actor,
the candidate's image/model/prompt/tools versions and the message.

`report NAME -o html|md|json [--out FILE] [--prometheus URL]` writes a self-contained report: the
readiness scorecard, the timeline of decisions, plots of the candidate weight and of each gate against
its bound (Prometheus range queries from where the plugin runs; --prometheus when the spec's URL is
in-cluster only) and the baseline. It reads only.

Without -n, the namespace is the kubeconfig context's (or `default`), as kubectl does.
Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from agent_rollout import api, history, report
from agent_rollout.readiness import baseline_refusal

VERBS: dict[str, dict[str, Any]] = {
    "abort": {"abort": True},
    "promote": {"promote": True},
    "retry": {"retry": True},
    "baseline": {"recordBaseline": True},
    "drill": {"drill": {"stayRolledBack": False}},
}
# "HTTPSConnection(host='127.0.0.1', port=1): " (urllib3 2) or "<...HTTPSConnection object at 0x7f...>: " (1)
CONNECTION_REPR = re.compile(r"^<?[\w.]*Connection(\(.*?\)| object at 0x[0-9a-f]+)?>?: ")
FINISHED = {api.Phase.PROMOTED.value, api.Phase.ROLLED_BACK.value, api.Phase.FAILED.value}
LIVE = {api.Phase.PROGRESSING.value, api.Phase.PAUSED.value}


class CliError(Exception):
    """Something the user must fix or know; main prints it as one line and exits 1."""


def render(obj: dict[str, Any]) -> str:
    """A human view of one AgentRollout: where it is, why, and on what evidence."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {}) or {}
    steps = spec.get("steps", [])
    weights = status.get("weights", {"legacy": 100, "candidate": 0})
    step = status.get("currentStep", 0)
    lines = [
        f"{meta.get('namespace')}/{meta.get('name')}  phase={status.get('phase', 'Pending')}  "
        f"step={min(step + 1, len(steps))}/{len(steps)}  "
        f"weights: legacy={weights.get('legacy')} candidate={weights.get('candidate')}",
    ]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    if line := readiness_line(status):
        lines.append(f"  {line}")
    if line := drill_line(status):
        lines.append(f"  {line}")
    gates = status.get("lastAnalysis", [])
    if gates:
        lines.append(f"  {'gate':<16} {'verdict':<13} {'value':>12} {'bound':<28} samples")
        for g in gates:
            value = "-" if g.get("value") is None else f"{g['value']:.4g}"
            samples = "-" if g.get("samples") is None else f"{g['samples']}/{g.get('minSamples', 0)}"
            dry = " (dry run)" if g.get("dryRun") else ""
            lines.append(
                f"  {g['name']:<16} {g['verdict'] + dry:<13} {value:>12} {g.get('bound', ''):<28} {samples}"
            )
    for decision in status.get("history", [])[-3:]:
        lines.append(f"  {decision['time']}  {decision['reason']}: {decision['message']}")
    return "\n".join(lines)


def drill_line(status: dict[str, Any]) -> str:
    """The latest rollback drill in one line (status.lastDrill)."""
    drill = status.get("lastDrill") or {}
    if not drill.get("result"):
        return ""
    route = drill.get("routeSeconds")
    confirmed = drill.get("confirmSeconds")
    return (
        f"drill={drill['result']} started {drill.get('startedAt')}  route at legacy 100: "
        f"{'-' if route is None else f'{route}s'}  confirmed: {'-' if confirmed is None else f'{confirmed}s'}"
        f"  bound {drill.get('bound')}" + (f"  {drill['message']}" if drill.get("message") else "")
    )


def readiness_line(status: dict[str, Any]) -> str:
    """The current stage and the next unmet criterion in one line (status.readiness)."""
    readiness = status.get("readiness") or {}
    if not readiness.get("stage"):
        return ""
    return f"stage={readiness['stage']}  next: {readiness.get('next') or '-'}"


# ---------------------------------------------------------------- what a verb will do (pure)


class Outcome(Enum):
    SEND = "send"  # patch, print the text on stdout, exit 0
    NOTHING_TO_DO = "nothing"  # do not patch, print the text on stdout, exit 0
    REFUSE = "refuse"  # do not patch, print the text on stderr, exit 1


@dataclass(frozen=True)
class Advice:
    outcome: Outcome
    text: str


def verb_patch(
    verb: str, stay_rolled_back: bool = False, bound: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """The status merge patch of a verb; only drill takes options. With a reason, the verb's request
    record too (the chart's admission stamps who sent it; drill records no requester yet)."""
    if verb != "drill":
        status: dict[str, Any] = dict(VERBS[verb])
        if reason:
            status["requests"] = {next(iter(VERBS[verb])): {"reason": reason}}
        return status
    if bound is not None and not re.fullmatch(api.DURATION_PATTERN, bound):
        raise CliError(f"error: --bound {bound!r} is not a duration (use forms like 90s, 15m, 1h)")
    request: dict[str, Any] = {"stayRolledBack": stay_rolled_back}
    if bound is not None:
        request["bound"] = bound
    return {"drill": request}


def advise(verb: str, obj: dict[str, Any], patch: dict[str, Any] | None = None) -> Advice:
    """What `verb` (with its status `patch`, for drill) will do to the rollout `obj` as last read,
    under the operator's rules."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    phase = status.get("phase") or api.Phase.PENDING.value
    ref = f"agentrollout {meta.get('namespace')}/{meta.get('name')}"
    legacy = (spec.get("legacy") or {}).get("deployment", "legacy")
    candidate = (spec.get("candidate") or {}).get("deployment", "candidate")
    steps = len(spec.get("steps") or [])
    step = min(int(status.get("currentStep") or 0) + 1, steps)
    share = (status.get("weights") or {}).get("candidate", 0)

    if verb == "abort":
        if phase == api.Phase.ROLLED_BACK.value and status.get("capacityRollback"):
            return Advice(
                Outcome.SEND,
                f"{ref}: abort requested: the rollback waiting for legacy {legacy}'s ready replicas sends "
                f"all traffic to legacy now (candidate {candidate} drops from {share}% to 0%)",
            )
        if phase in (api.Phase.ROLLED_BACK.value, api.Phase.FAILED.value):
            # No patch: the phase already routes everything to legacy, and a flag left set here would
            # be a latent abort that fires, unasked, when the rollout restarts (spec fixed, retry).
            return Advice(
                Outcome.NOTHING_TO_DO,
                f"{ref} is already {phase}: all traffic already goes to legacy {legacy}; nothing to do",
            )
        if phase == api.Phase.PROMOTED.value:
            return Advice(
                Outcome.SEND,
                f"{ref}: abort requested: it is Promoted, so ALL traffic goes back to legacy {legacy} "
                f"(candidate {candidate} drops from {share}% to 0%)",
            )
        return Advice(
            Outcome.SEND,
            f"{ref}: abort requested: all traffic goes back to legacy {legacy} "
            f"(candidate {candidate} now at {share}%)",
        )

    if verb == "retry":
        if phase == api.Phase.ROLLED_BACK.value:
            return Advice(
                Outcome.SEND,
                f"{ref}: retry requested: candidate {candidate} restarts from step 1/{steps}",
            )
        hint = {
            api.Phase.FAILED.value: "; a Failed rollout restarts by itself once its spec is valid",
            api.Phase.PROMOTED.value: f"; to roll out another version, change Deployment {candidate}",
        }.get(phase, "")
        return Advice(
            Outcome.REFUSE,
            f"error: cannot retry {ref}: it is {phase}, and retry only restarts a RolledBack rollout "
            f"(the operator would consume the request without effect){hint}",
        )

    if verb == "promote":
        why_not = {
            api.Phase.PROMOTED.value: "it is already Promoted: all traffic goes to the candidate",
            api.Phase.ROLLED_BACK.value: "it is RolledBack; `kubectl agentrollout retry` restarts it",
            api.Phase.FAILED.value: "it is Failed (invalid spec); fixing the spec restarts it",
            api.Phase.PENDING.value: "it is Pending: the operator has not started it yet "
            "(the operator would consume the request without effect)",
        }.get(phase)
        if why_not is not None:
            return Advice(Outcome.REFUSE, f"error: cannot promote {ref}: {why_not}")
        current = (spec.get("steps") or [{}])[min(step, steps) - 1] if steps else {}
        if "approval" in current:
            return Advice(
                Outcome.REFUSE,
                f"error: cannot promote {ref}: step {step}/{steps} is an approval step, which only its "
                "approvers end (kubectl agentrollout approve); the operator would refuse it (PromoteRefused)",
            )
        if phase == api.Phase.PAUSED.value:
            return Advice(Outcome.SEND, f"{ref}: promote requested: ends the pause at step {step}/{steps}")
        return Advice(
            Outcome.SEND,
            f"{ref}: promote requested: ends step {step}/{steps} now (failing gates still roll back)",
        )

    if verb == "baseline":
        try:  # the operator's own rule (readiness.baseline_refusal), on the rollout as read
            why_not = baseline_refusal(api.parse_spec(spec), api.parse_status(status))
        except ValueError:  # pydantic's ValidationError
            why_not = "its spec or status does not parse (the operator would refuse it)"
        if why_not is not None:
            return Advice(Outcome.REFUSE, f"error: cannot record a baseline of {ref}: {why_not}")
        return Advice(
            Outcome.SEND,
            f"{ref}: baseline requested: candidate revision {status.get('candidateRevision')} against legacy "
            f"{legacy} over the rollout's last hour at most (status.baseline, a BaselineRecorded Event)",
        )

    if verb == "drill":
        return _advise_drill(ref, obj, (patch or VERBS["drill"])["drill"])

    raise ValueError(f"unknown verb {verb}")


def _advise_drill(ref: str, obj: dict[str, Any], request: dict[str, Any]) -> Advice:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    phase = status.get("phase") or api.Phase.PENDING.value
    share = (status.get("weights") or {}).get("candidate", 0)
    steps = len(spec.get("steps") or [])
    step = min(int(status.get("currentStep") or 0) + 1, steps)
    legacy = (spec.get("legacy") or {}).get("deployment", "legacy")
    last = status.get("lastDrill") or {}
    if last.get("result") == api.DrillResult.RUNNING.value and phase in LIVE:
        return Advice(
            Outcome.REFUSE,
            f"error: cannot drill {ref}: a drill is already running (since {last.get('startedAt')})",
        )
    if phase not in LIVE or not share:
        return Advice(
            Outcome.REFUSE,
            f"error: cannot drill {ref}: it is {phase} with candidate weight {share}; a drill rehearses the "
            "rollback from a weighted step (Progressing or Paused, candidate weight > 0)",
        )
    criteria = ((spec.get("readiness") or {}).get("criteria") or {}).get("maxRollbackTime", "15m")
    bound = request.get("bound") or criteria
    after = (
        "then it stays RolledBack (as asked)"
        if request.get("stayRolledBack")
        else f"then traffic returns to step {step}/{steps} at candidate {share}% (the step starts over)"
    )
    return Advice(
        Outcome.SEND,
        f"{ref}: drill requested: all traffic goes to legacy {legacy} now; it passes when legacy's own "
        f"metrics confirm it within {bound}, {after}; a failed drill stays on legacy "
        "(status.lastDrill, kubectl agentrollout status)",
    )


# ---------------------------------------------------------------- errors as one line (pure)


def api_error_text(
    status: int | None, reason: str | None, body: str | None, namespace: str, name: str
) -> str:
    """One line for an API error response, from the Status object the apiserver sends back."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    message = parsed.get("message") or (body or "").strip() or reason or "no details"
    if status == 404:
        details = parsed.get("details") or {}
        if details.get("name") == name:
            return f"error: agentrollout {name} not found in namespace {namespace}"
        return (
            f"error: the API server does not serve {api.PLURAL}.{api.GROUP}/{api.VERSION} ({message}): "
            "is the AgentRollout CRD installed?"
        )
    if status == 403:
        return f"error: forbidden: {message}"
    if status == 401:
        return f"error: unauthorized: {message} (check the credentials in your kubeconfig)"
    if status == 422:
        return f"error: invalid: {message}"
    if not status:  # the client's own failures (TLS): no HTTP status at all
        return f"error: cannot talk to the Kubernetes API: {' '.join((reason or message).split())}"
    return f"error: {status} {reason or ''}: {message}".replace(" :", ":")


def connection_error_text(error: Exception, host: str) -> str:
    """One line for a request that never got an answer (connection refused, DNS, TLS handshake)."""
    cause = getattr(error, "reason", None) or error
    # urllib3 starts its messages with the connection's repr, which repeats the host: drop it.
    text = CONNECTION_REPR.sub("", str(cause), count=1)
    return f"error: cannot reach the Kubernetes API at {host}: {text}"


# ---------------------------------------------------------------- the shell


def kube_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the chosen kubeconfig context (the current one by default), else `default`."""
    import kubernetes

    try:
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except kubernetes.config.ConfigException as e:
        raise CliError(f"error: kubeconfig: {e}") from e
    chosen = current
    if context is not None:
        named = [c for c in contexts if c.get("name") == context]
        if not named:
            raise CliError(f"error: kubeconfig: no context named {context}")
        chosen = named[0]
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


def _custom_api(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    import kubernetes

    client_config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=client_config
        )
    except (kubernetes.config.ConfigException, OSError) as e:
        raise CliError(f"error: kubeconfig: {e}") from e
    custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(client_config))
    return custom, str(client_config.host)


def _get(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name
    )
    return obj


# A restarted apiserver answers 503 for the few seconds before it has loaded the CRD's schema that the
# chart's MutatingAdmissionPolicy (who asked) needs; a verb is worth those seconds, not an error.
UNAVAILABLE_RETRY_S = 15.0


def _patch_status(custom: Any, namespace: str, name: str, body: dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + UNAVAILABLE_RETRY_S
    while True:
        try:
            custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, body
            )
            return
        except ApiException as e:
            if e.status != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _send(custom: Any, verb: str, namespace: str, name: str, patch: dict[str, Any]) -> int:
    advice = advise(verb, _get(custom, namespace, name), patch)
    if advice.outcome is Outcome.REFUSE:
        print(advice.text, file=sys.stderr)
        return 1
    if advice.outcome is Outcome.SEND:
        _patch_status(custom, namespace, name, {"status": patch})
    print(advice.text)
    return 0


def _approve(custom: Any, namespace: str, name: str, reason: str | None) -> int:
    obj = _get(custom, namespace, name)
    refused = history.approve_refusal(obj)
    if refused is not None:
        print(refused, file=sys.stderr)
        return 1
    patch = history.approve_patch(obj, reason or "")
    _patch_status(custom, namespace, name, patch)
    revision = patch["status"]["requests"]["approve"].get("revision")
    print(
        f"agentrollout {namespace}/{name}: approval of candidate revision {revision} sent; the operator "
        "counts it (kubectl agentrollout history shows it)"
    )
    return 0


def _history(custom: Any, namespace: str, name: str, output: str) -> int:
    obj = _get(custom, namespace, name)
    print(history.history_json(obj) if output == "json" else history.history_table(obj))
    return 0


def _status(custom: Any, namespace: str, name: str, watch: bool) -> int:
    while True:
        obj = _get(custom, namespace, name)
        print(render(obj), flush=True)
        if not watch or (obj.get("status") or {}).get("phase") in FINISHED:
            return 0
        time.sleep(2)
        print()


def package_version() -> str:
    """The installed distribution's version (what pip or pipx installed), without talking to any cluster."""
    from importlib import metadata

    try:
        return metadata.version("agent-rollout")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


# ---------------------------------------------------------------- shell completion

# kubectl (1.26+) completes `kubectl agentrollout ...` by running `kubectl_complete-agentrollout` from
# PATH with the words typed so far, the last one partial, and reads Cobra's format: one candidate a
# line, then `:<directive>`; 4 is "no file completion".
NO_FILE_COMPLETION = ":4"
NAMED_VERBS = ("status", "history", "report", "approve", *VERBS)
VALUE_FLAGS = frozenset(
    {"-n", "--namespace", "--kubeconfig", "--context", "--bound", "--reason", "-o", "--output"}
)


RolloutNames = Callable[[str | None, str | None, str | None], list[str]]


def complete_words(words: list[str], rollout_names: RolloutNames) -> list[str]:
    """Candidates for the last (partial) word; rollout_names(namespace, kubeconfig, context) lists names."""
    typed, partial = words[:-1], (words[-1] if words else "")
    if typed and typed[-1] in VALUE_FLAGS:
        return []  # a namespace, file or context name: not ours to guess
    positionals: list[str] = []
    flags: dict[str, str] = {}
    pending: str | None = None
    for word in typed:
        if pending is not None:
            flags[pending], pending = word, None
        elif word in VALUE_FLAGS:
            pending = word
        elif not word.startswith("-"):
            positionals.append(word)
    if not positionals:
        return [verb for verb in (*NAMED_VERBS, "version") if verb.startswith(partial)]
    if len(positionals) == 1 and positionals[0] in NAMED_VERBS and not partial.startswith("-"):
        namespace = flags.get("-n") or flags.get("--namespace")
        names = rollout_names(namespace, flags.get("--kubeconfig"), flags.get("--context"))
        return sorted(name for name in names if name.startswith(partial))
    return []


def _rollout_names(namespace: str | None, kubeconfig: str | None, context: str | None) -> list[str]:
    """Names of the AgentRollouts in the namespace; none at all when the cluster cannot say."""
    try:
        kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
        namespace = namespace or kube_namespace(kubeconfig, context)
        custom, _ = _custom_api(kubeconfig, context)
        listed = custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, _request_timeout=5
        )
        return [item["metadata"]["name"] for item in listed.get("items", [])]
    except Exception:  # completion must never print a traceback into the user's shell
        return []


def complete_main(argv: list[str] | None = None) -> int:
    """`kubectl_complete-agentrollout`: what kubectl runs to complete the plugin's words."""
    for candidate in complete_words(sys.argv[1:] if argv is None else argv, _rollout_names):
        print(candidate)
    print(NO_FILE_COMPLETION)
    return 0


def fetch_gate_series(
    series: list[report.GateSeries], url: str, start: float, end: float, timeout: float = 10.0
) -> list[report.GateSeries]:
    """Each gate's candidate value over [start, end] (~300 points); a failure is said in the report."""
    import requests

    step = max(1.0, (end - start) / 300)
    out: list[report.GateSeries] = []
    unreachable: str | None = None
    for gate in series:
        if gate.error is not None or unreachable is not None:
            out.append(gate if gate.error is not None else replace(gate, error=unreachable))
            continue
        params: dict[str, str | float] = {"query": gate.query, "start": start, "end": end, "step": step}
        try:
            response = requests.get(url.rstrip("/") + "/api/v1/query_range", params=params, timeout=timeout)
            response.raise_for_status()
            result = response.json()["data"]["result"]
        except requests.ConnectionError as e:
            unreachable = f"Prometheus at {url} unreachable: {type(e).__name__}"
            out.append(replace(gate, error=unreachable))
            continue
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            out.append(replace(gate, error=f"range query failed: {e}"))
            continue
        values = result[0]["values"] if result else []
        points = [(float(t), float(v)) for t, v in values if math.isfinite(float(v))]
        out.append(replace(gate, points=points))
    return out


def _report(
    custom: Any, namespace: str, name: str, output: str, out: str | None, prometheus: str | None
) -> int:
    obj = _get(custom, namespace, name)
    now = datetime.now(UTC)
    series = report.gate_series(obj)
    url = prometheus or ((obj.get("spec") or {}).get("analysis") or {}).get("prometheus", {}).get("url")
    if series and url:
        start, end = report.time_range(obj, now)
        series = fetch_gate_series(series, url, start, end)
    text = report.RENDERERS[output](report.build(obj, series, now))
    if out is None:
        sys.stdout.write(text)
        return 0
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"report written to {os.path.abspath(out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The plugin's command line (docs/runbook.md is checked against it by a unit test)."""
    parser = argparse.ArgumentParser(
        prog="kubectl agentrollout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("verb", choices=[*NAMED_VERBS, "version"])
    parser.add_argument("name", nargs="?", help="the AgentRollout (every verb but version)")
    parser.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's")
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    parser.add_argument("-w", "--watch", action="store_true", help="with status: refresh until finished")
    parser.add_argument(
        "-o",
        "--output",
        choices=sorted({*report.RENDERERS, "table"}),
        default=None,
        help="with report (default html) and history (table or json)",
    )
    parser.add_argument(
        "--reason", default=None, help="with approve and the verbs: why, kept with the request"
    )
    parser.add_argument("--out", default=None, help="with report: write to this file (default: stdout)")
    parser.add_argument(
        "--prometheus", default=None, help="with report: Prometheus URL (default: the spec's)"
    )
    parser.add_argument(
        "--stay-rolled-back", action="store_true", help="with drill: stay RolledBack when the drill passes"
    )
    parser.add_argument(
        "--bound", default=None, help="with drill: the drill's time bound (default: maxRollbackTime, 15m)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb == "version":
        print(f"kubectl-agentrollout {package_version()}")
        return 0
    if args.name is None:
        parser.error(f"{args.verb} needs the name of an AgentRollout")

    import urllib3
    from kubernetes.client.exceptions import ApiException

    # Read $KUBECONFIG now: the kubernetes client reads it once, at import.
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or None
    host = "?"
    namespace = args.namespace
    try:
        if namespace is None:
            namespace = kube_namespace(kubeconfig, args.context)
        custom, host = _custom_api(kubeconfig, args.context)
        if args.verb in VERBS:
            patch = verb_patch(args.verb, args.stay_rolled_back, args.bound, args.reason)
            return _send(custom, args.verb, namespace, args.name, patch)
        if args.verb == "approve":
            return _approve(custom, namespace, args.name, args.reason)
        if args.verb == "history":
            return _history(custom, namespace, args.name, args.output or "table")
        if args.verb == "report":
            output = args.output or "html"
            if output not in report.RENDERERS:
                parser.error(f"report -o takes one of {', '.join(sorted(report.RENDERERS))}")
            return _report(custom, namespace, args.name, output, args.out, args.prometheus)
        return _status(custom, namespace, args.name, args.watch)
    except CliError as e:
        print(e, file=sys.stderr)
    except ApiException as e:
        print(api_error_text(e.status, e.reason, e.body, namespace, args.name), file=sys.stderr)
    except urllib3.exceptions.HTTPError as e:
        print(connection_error_text(e, host), file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C ends `status -w`: not an error worth a traceback
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
