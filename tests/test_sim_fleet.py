"""The fleet exporter the scale benchmarks read (e2e/sim/fleet.py): what Prometheus would scrape from
it, so the benchmarks' breaches are what they claim to be."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from e2e.sim.fleet import METRIC, Exposition

PAIRS = [("team-a", "agent-v1"), ("team-a", "agent-v2")]


def _scrape(exposition: Exposition, now: float) -> dict[tuple[str, str, str, str], float]:
    """(series name, version, le, error_type) -> value of the exposition's text at `now`."""
    out = {}
    for family in text_string_to_metric_families(exposition.render(now)):
        for sample in family.samples:
            labels = sample.labels
            key = (sample.name, labels["version"], labels.get("le", ""), labels.get("error_type", ""))
            out[key] = sample.value
    return out


def test_every_pair_shows_its_errors_from_the_start_at_the_healthy_ratio() -> None:
    scraped = _scrape(Exposition(PAIRS, rps=2.0, started=0.0, error_ratio=0.01), now=100.0)
    for _, version in PAIRS:
        ok, errors = (
            scraped[(f"{METRIC}_count", version, "", "")],
            scraped[(f"{METRIC}_count", version, "", "500")],
        )
        assert (ok, errors) == (198.0, 2.0)  # 200 requests, 1% of them errors
        assert scraped[(f"{METRIC}_bucket", version, "+Inf", "")] == ok


def test_a_latency_breach_puts_that_share_of_the_new_successes_in_the_inf_bucket_only() -> None:
    exposition = Exposition(PAIRS, rps=2.0, started=0.0, error_ratio=0.01)
    exposition.breach("team-a", "agent-v2", 0.01, now=100.0, slow_ratio=0.5)
    before, after = _scrape(exposition, 100.0), _scrape(exposition, 110.0)

    def grew(name: str, le: str = "", error_type: str = "") -> float:
        key = (f"{METRIC}_{name}", "agent-v2", le, error_type)
        return round(after[key] - before[key], 6)

    assert grew("count") == 19.8 and grew("count", error_type="500") == 0.2  # 20 requests, 1% errors
    assert grew("bucket", "+Inf") == 19.8  # every success
    assert grew("bucket", "10") == 9.9  # only the fast half: p95 falls in the +Inf bucket
    assert after[(f"{METRIC}_count", "agent-v1", "", "")] == 217.8  # the other pair is untouched
