"""Shadow steps: the rules of a step that mirrors legacy's live traffic to the shadow comparator.

Pure, like the planner that calls it. During a shadow step the planner wants the route to carry one
RequestMirror filter of ours (traffic.value.Mirror) in each rule carrying legacy, and legacy 100 /
candidate 0; in every other state it wants none, so the end of the step, an abort, a rollback or an
invalid spec all remove the filter by the same rule (the router writes it in the same atomic patch as
the weights, mirror ops first). The step ends once its duration has passed since it began and the
comparator has counted `minRequests` compared pairs in it; gates (shadowAgreement, and the usual
templates over the candidate's own metrics, which during the step measure shadow traffic only) hold
or roll it back as in any step.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agent_rollout import api
from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, Analysis, Shadow, Template
from agent_rollout.clock import parse_time
from agent_rollout.domain import Observations, RouteIntent, SpecProblem, iso
from agent_rollout.routing import cannot_serve, exists
from agent_rollout.tick import LIVE_PHASES, Tick
from agent_rollout.traffic.value import Mirror


def shadow_problems(shadow: Shadow, path: str, weighted_at: int) -> list[SpecProblem]:
    # A shadow step compares the candidate with legacy before users reach it: after a setWeight step
    # users already reach the candidate, and the comparator's pairs would be mixed with real traffic.
    if weighted_at < 0:
        return []
    return [
        SpecProblem(
            path,
            f"a shadow step must come before any setWeight step (spec.steps[{weighted_at}] already sends "
            "users to the candidate)",
        )
    ]


def mirror_of(shadow: Shadow) -> Mirror:
    return Mirror(shadow.comparator.service, shadow.comparator.port, shadow.percent)


def targets(spec: AgentRolloutSpec | None, *more: Mirror | None) -> tuple[Mirror, ...]:
    """The comparators this rollout may have mirrored to: every shadow step's, and what the route's
    write-ahead record says it wrote (a spec edited since, or one that no longer parses)."""
    found: list[Mirror] = []
    if spec is not None:
        found += [mirror_of(s.shadow) for s in spec.steps if s.shadow is not None]
    found += [m for m in more if m is not None]
    unique: dict[tuple[str, int], Mirror] = {}
    for m in found:
        unique.setdefault((m.service, m.port), m)
    return tuple(unique.values())


def ours_and_others(
    spec: AgentRolloutSpec | None, record: RouteIntent | None
) -> tuple[tuple[Mirror, ...], tuple[Mirror, ...]]:
    """(ours, others): the mirror this rollout wrote, as the route's write-ahead record (written in the
    same patch as the filter) says, and every other comparator its shadow steps may mirror to. Only ours
    is ever read as ours or removed: a filter identical to one of ours that the record does not name is
    someone else's (router: a mirror conflict), however it got there."""
    ours = (record.mirror,) if record is not None and record.mirror is not None else ()
    taken = {(m.service, m.port) for m in ours}
    return ours, tuple(m for m in targets(spec) if (m.service, m.port) not in taken)


def current_shadow(spec: AgentRolloutSpec | None, st: AgentRolloutStatus) -> Shadow | None:
    if spec is None or st.phase not in LIVE_PHASES or not 0 <= st.current_step < len(spec.steps):
        return None
    return spec.steps[st.current_step].shadow


def wanted_mirror(spec: AgentRolloutSpec | None, st: AgentRolloutStatus, obs: Observations) -> Mirror | None:
    """The mirror the route should carry now: only in a live shadow step, with legacy there and a
    candidate that can answer (the comparator replays every copy to it: never mirror to nowhere)."""
    shadow = current_shadow(spec, st)
    if shadow is None or st.weights.candidate != 0 or obs.route_claimed_by is not None:
        return None
    if obs.route_mirror_conflict is not None:
        return None  # never a second mirror beside someone else's identical one
    if not exists(obs.legacy) or cannot_serve(obs.candidate):
        return None
    return mirror_of(shadow)


def shadow_over(t: Tick, spec: AgentRolloutSpec, shadow: Shadow) -> bool:
    """The step's own conditions are met: the mirror is in place, its duration has passed, and the
    comparator counted minRequests pairs since the step began. Sets t.waiting otherwise."""
    want = mirror_of(shadow)
    if t.obs.route_mirror_conflict is not None:
        t.waiting = t.obs.route_mirror_conflict
        return False
    if t.obs.route_mirror != want or not t.obs.route_mirror_exact:
        t.waiting = f"waiting for the route to mirror {want.percent}% to {want.service}"
        return False
    end = shadow_end(t.st, shadow)
    if end is not None and t.now < end:
        t.waiting = f"shadowing {want.percent}% of legacy's traffic until {iso(end)}"
        return False
    seen = t.obs.shadow_pairs
    if shadow.min_requests is not None and (seen is None or seen < shadow.min_requests):
        got = "?" if seen is None else str(seen)
        t.waiting = f"waiting for compared shadow pairs {got}/{shadow.min_requests}"
        return False
    return True


def shadow_end(st: AgentRolloutStatus, shadow: Shadow) -> datetime | None:
    started = parse_time(st.step_started_at)
    if started is None:
        return None
    return started + timedelta(seconds=api.duration_seconds(shadow.duration))


def judged_analysis(spec: AgentRolloutSpec, st: AgentRolloutStatus) -> Analysis | None:
    """The gates that judge the current step: shadowAgreement gates only during a shadow step (outside
    one the comparator compares nothing, and they would hold every other step for want of samples)."""
    analysis = spec.analysis
    if analysis is None or current_shadow(spec, st) is not None:
        return analysis
    gates = [g for g in analysis.gates if g.template is not Template.SHADOW_AGREEMENT]
    if len(gates) == len(analysis.gates):
        return analysis
    return analysis.model_copy(update={"gates": gates})
