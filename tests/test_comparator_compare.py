"""The comparator's comparison: pure functions over two answers (agent_rollout/comparator/compare.py)."""

from __future__ import annotations

import json

import pytest

from agent_rollout.comparator.compare import (
    Answer,
    Comparison,
    Mode,
    Outcome,
    compare,
    judge_request,
    judge_verdict,
    resolve,
    similarity,
    tokens,
)

EXACT = Comparison(Mode.EXACT)


def ok(body: object, status: int = 200) -> Answer:
    return Answer(status, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_exact_mode_matches_identical_bodies_only() -> None:
    assert compare(ok(b"yes"), ok(b"yes"), EXACT).outcome is Outcome.MATCH
    verdict = compare(ok(b"yes"), ok(b"yes "), EXACT)
    assert verdict.outcome is Outcome.MISMATCH and verdict.reason == "bodies differ"


def test_a_failed_candidate_is_an_error_not_a_mismatch_even_when_legacy_failed_too() -> None:
    for candidate in (Answer(None), Answer(500, b"boom"), Answer(503)):
        assert compare(ok(b"a"), candidate, EXACT).outcome is Outcome.CANDIDATE_ERROR
    assert compare(Answer(502), Answer(None), EXACT).outcome is Outcome.CANDIDATE_ERROR


def test_a_failed_legacy_leaves_nothing_to_compare_with() -> None:
    verdict = compare(Answer(None), ok(b"a"), EXACT)
    assert verdict.outcome is Outcome.LEGACY_ERROR and verdict.reason == "no answer"
    assert compare(Answer(500), ok(b"a"), EXACT).reason == "status 500"


def test_differing_statuses_are_a_mismatch_and_equal_client_errors_compare_bodies() -> None:
    verdict = compare(ok(b"a", 200), ok(b"a", 404), EXACT)
    assert verdict.outcome is Outcome.MISMATCH and verdict.reason == "status 200 != 404"
    assert compare(ok(b"nope", 400), ok(b"nope", 400), EXACT).outcome is Outcome.MATCH


def test_an_answer_over_the_size_limit_is_skipped() -> None:
    big = Answer(200, b"x" * 10, too_large=True)
    assert compare(ok(b"x"), big, EXACT).outcome is Outcome.SKIPPED
    assert compare(big, ok(b"x"), EXACT).outcome is Outcome.SKIPPED


def test_json_mode_compares_only_the_named_fields() -> None:
    by_label = Comparison(Mode.JSON, ("/answer/label", "status"))
    legacy = ok({"answer": {"label": "refund", "text": "We refund you."}, "status": "done", "latency": 0.2})
    same = ok({"status": "done", "answer": {"text": "Refund issued.", "label": "refund"}, "latency": 1.5})
    other = ok({"answer": {"label": "escalate"}, "status": "done"})
    assert compare(legacy, same, by_label).outcome is Outcome.MATCH
    verdict = compare(legacy, other, by_label)
    assert verdict.outcome is Outcome.MISMATCH and verdict.reason == "differ: /answer/label"


def test_json_mode_without_fields_ignores_key_order_and_spacing_but_not_values() -> None:
    whole = Comparison(Mode.JSON)
    assert compare(ok(b'{"a": 1, "b": [1, 2]}'), ok(b'{"b":[1,2],"a":1}'), whole).outcome is Outcome.MATCH
    assert compare(ok(b'{"a": 1}'), ok(b'{"a": 2}'), whole).outcome is Outcome.MISMATCH


def test_json_mode_a_field_missing_on_one_side_differs_missing_on_both_agrees() -> None:
    c = Comparison(Mode.JSON, ("label",))
    assert compare(ok({"x": 1}), ok({"x": 2}), c).outcome is Outcome.MATCH
    assert compare(ok({"label": None}), ok({}), c).outcome is Outcome.MISMATCH


def test_json_mode_non_json_answers() -> None:
    c = Comparison(Mode.JSON, ("label",))
    assert compare(ok({"label": "a"}), ok(b"<html>"), c).outcome is Outcome.MISMATCH
    assert compare(ok(b"<html>"), ok({"label": "a"}), c).outcome is Outcome.LEGACY_ERROR


def test_json_pointer_follows_rfc_6901_escapes_and_array_indexes() -> None:
    doc = {"a/b": {"m~n": [10, 20]}, "k": "v"}
    assert resolve(doc, "/a~1b/m~0n/1") == 20
    assert resolve(doc, "k") == "v"
    missing = resolve(doc, "/a~1b/m~0n/7")
    assert missing is resolve(doc, "/nope") and missing is resolve([1], "k")


def test_text_similarity_is_token_jaccard_after_normalisation() -> None:
    assert tokens("Your REFUND, is on its way!") == {"your", "refund", "is", "on", "its", "way"}
    assert tokens("\uff32\uff45\uff46\uff55\uff4e\uff44") == {
        "refund"
    }  # NFKC: full-width letters are the same word
    assert similarity("a b c", "c b a") == 1.0
    assert similarity("a b c d", "a b x y") == pytest.approx(2 / 6)
    assert similarity("...", "") == 1.0


def test_text_mode_applies_the_threshold_and_reports_the_score() -> None:
    c = Comparison(Mode.TEXT, threshold=0.6)
    close = compare(ok(b"The refund is on its way."), ok(b"the refund is ON its way"), c)
    assert close.outcome is Outcome.MATCH and close.score == 1.0
    far = compare(ok(b"the refund is on its way"), ok(b"we escalated your ticket"), c)
    assert far.outcome is Outcome.MISMATCH and far.reason == "similarity 0.00 < 0.60"


def test_text_mode_with_fields_takes_the_least_similar_field() -> None:
    c = Comparison(Mode.TEXT, ("/answer", "/summary"), threshold=0.5)
    legacy = ok({"answer": "refund approved today", "summary": "refund"})
    candidate = ok({"answer": "refund approved today", "summary": "escalation"})
    verdict = compare(legacy, candidate, c)
    assert verdict.outcome is Outcome.MISMATCH and verdict.reason.startswith("/summary similarity 0.00")


def test_reasons_never_carry_the_answers_content() -> None:
    secret = "jane.doe@example.com"
    pairs = [
        (Comparison(Mode.EXACT), ok(secret.encode()), ok(b"other")),
        (Comparison(Mode.JSON, ("email",)), ok({"email": secret}), ok({"email": "x"})),
        (Comparison(Mode.TEXT, threshold=0.9), ok(secret.encode()), ok(b"x")),
    ]
    for comparison, legacy, candidate in pairs:
        verdict = compare(legacy, candidate, comparison)
        assert verdict.outcome is Outcome.MISMATCH and "jane" not in verdict.reason


def test_bad_comparisons_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Comparison(Mode.TEXT, threshold=1.5)
    with pytest.raises(ValueError, match="fields need mode json or text"):
        Comparison(Mode.EXACT, ("label",))


def test_the_judge_gets_both_answers_and_only_a_boolean_agree_is_a_verdict() -> None:
    payload = judge_request(b"question", ok(b"one"), Answer(201, b"two"))
    assert payload == {
        "request": "question",
        "legacy": {"status": 200, "body": "one"},
        "candidate": {"status": 201, "body": "two"},
    }
    assert judge_verdict(200, b'{"agree": true}').outcome is Outcome.MATCH
    assert judge_verdict(200, b'{"agree": false}').outcome is Outcome.MISMATCH
    for status, body in ((200, b'{"agree": "yes"}'), (200, b"true"), (500, b""), (None, b"")):
        assert judge_verdict(status, body).outcome is Outcome.JUDGE_ERROR
