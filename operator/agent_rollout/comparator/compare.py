"""How two answers to the same request are compared: pure functions, no I/O.

One comparison applies to both pairs the comparator sees, legacy vs candidate and legacy vs legacy
(the noise floor), so the two agreement rates measure the same thing and can be set against each other.

Modes:
  exact  the bodies are byte-for-byte equal.
  json   the bodies parse as JSON and agree on `fields` (JSON pointers such as /answer/label, or
         bare top-level keys); no fields compares the whole documents (key order and spacing ignored).
  text   normalised text similarity of the bodies (or of each of `fields`) is at least `threshold`.
         The similarity is the Jaccard index of the two sets of word tokens after Unicode NFKC,
         case folding and dropping punctuation: linear in the answer's length (difflib's ratio is
         quadratic in the worst case, and agents answer at length) and blind to word order, which
         is what differs most between two phrasings of the same answer.

Before any of them: an answer that failed (no answer, or a 5xx) is an error of its side, never a
mismatch, so a candidate's errors are counted as errors; differing statuses are a mismatch.
Reasons name statuses, fields and scores only, never content: they may end up in logs and metrics.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    EXACT = "exact"
    JSON = "json"
    TEXT = "text"


class Outcome(StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    CANDIDATE_ERROR = "candidate_error"  # the second answer of a pair failed (for the noise pair: legacy's)
    LEGACY_ERROR = "legacy_error"  # the reference answer failed (or is not JSON): nothing to compare with
    SKIPPED = "skipped"  # an answer over the size limit: not compared, not counted for or against
    JUDGE_ERROR = "judge_error"  # the external judge gave no usable verdict


@dataclass(frozen=True)
class Comparison:
    mode: Mode = Mode.EXACT
    fields: tuple[str, ...] = ()
    threshold: float = 0.8  # text mode only

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.fields and self.mode is Mode.EXACT:
            raise ValueError("fields need mode json or text (exact compares whole bodies)")
        for field in self.fields:
            if not field:
                raise ValueError("a field must not be empty (use no fields to compare whole bodies)")


@dataclass(frozen=True)
class Answer:
    """What one agent answered. status None: no answer at all (refused, reset, timed out)."""

    status: int | None
    body: bytes = b""
    too_large: bool = False  # the body went over the comparator's limit; `body` is not all of it

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    score: float | None = None  # text similarity, when the mode computes one


def compare(reference: Answer, other: Answer, comparison: Comparison) -> Verdict:
    """The verdict on `other` (the candidate, or legacy's second answer) against `reference` (legacy)."""
    if other.failed:
        return Verdict(Outcome.CANDIDATE_ERROR, _failure(other))
    if reference.failed:
        return Verdict(Outcome.LEGACY_ERROR, _failure(reference))
    if reference.too_large or other.too_large:
        return Verdict(Outcome.SKIPPED, "answer over the size limit")
    if reference.status != other.status:
        return Verdict(Outcome.MISMATCH, f"status {reference.status} != {other.status}")
    return compare_bodies(reference.body, other.body, comparison)


def compare_bodies(reference: bytes, other: bytes, comparison: Comparison) -> Verdict:
    if comparison.mode is Mode.EXACT:
        same = reference == other
        return Verdict(Outcome.MATCH if same else Outcome.MISMATCH, "" if same else "bodies differ")
    if comparison.mode is Mode.JSON:
        return _compare_json(reference, other, comparison.fields)
    return _compare_text(reference, other, comparison)


def _failure(answer: Answer) -> str:
    return "no answer" if answer.status is None else f"status {answer.status}"


# --- json -------------------------------------------------------------------------------------------

_MISSING = object()


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _MISSING


def _compare_json(reference: bytes, other: bytes, fields: Sequence[str]) -> Verdict:
    ref_doc, other_doc = _parse(reference), _parse(other)
    if ref_doc is _MISSING:  # nothing to compare with, as when legacy fails
        return Verdict(Outcome.LEGACY_ERROR, "legacy's answer is not JSON")
    if other_doc is _MISSING:
        return Verdict(Outcome.MISMATCH, "answer is not JSON")
    if not fields:
        same = ref_doc == other_doc
        return Verdict(Outcome.MATCH if same else Outcome.MISMATCH, "" if same else "documents differ")
    differing = [f for f in fields if resolve(ref_doc, f) != resolve(other_doc, f)]
    if differing:
        return Verdict(Outcome.MISMATCH, "differ: " + ", ".join(differing))
    return Verdict(Outcome.MATCH)


def resolve(document: Any, field: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or at a bare top-level key; a sentinel when absent.

    Two answers that both lack a field agree on it; one that lacks it disagrees with one that has it.
    """
    if not field.startswith("/"):
        return document.get(field, _MISSING) if isinstance(document, dict) else _MISSING
    node = document
    for raw in field[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(token, _MISSING)
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


# --- text -------------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


def tokens(text: str) -> frozenset[str]:
    """The word tokens of a text after NFKC, case folding and dropping punctuation."""
    normalised = unicodedata.normalize("NFKC", text).casefold()
    return frozenset(t for t in _NON_WORD.split(normalised) if t)


def similarity(a: str, b: str) -> float:
    """Jaccard index of the token sets; two texts without any word are equal (1.0)."""
    ta, tb = tokens(a), tokens(b)
    if not ta and not tb:
        return 1.0
    return len(ta & tb) / len(ta | tb)


def _as_text(value: Any) -> str:
    if value is _MISSING:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _compare_text(reference: bytes, other: bytes, comparison: Comparison) -> Verdict:
    if comparison.fields:
        ref_doc, other_doc = _parse(reference), _parse(other)
        if ref_doc is _MISSING:
            return Verdict(Outcome.LEGACY_ERROR, "legacy's answer is not JSON")
        if other_doc is _MISSING:
            return Verdict(Outcome.MISMATCH, "answer is not JSON")
        scores = {
            f: similarity(_as_text(resolve(ref_doc, f)), _as_text(resolve(other_doc, f)))
            for f in comparison.fields
        }
        field, score = min(scores.items(), key=lambda item: item[1])
        label = f"{field} similarity"
    else:
        ref_text = reference.decode("utf-8", errors="replace")
        other_text = other.decode("utf-8", errors="replace")
        score, label = similarity(ref_text, other_text), "similarity"
    if score >= comparison.threshold:
        return Verdict(Outcome.MATCH, score=score)
    return Verdict(Outcome.MISMATCH, f"{label} {score:.2f} < {comparison.threshold:.2f}", score=score)


# --- the external judge -------------------------------------------------------------------------------


def judge_request(request_body: bytes, reference: Answer, other: Answer) -> dict[str, Any]:
    """What the judge is POSTed: the request and both answers, as text (invalid UTF-8 replaced)."""

    def text(body: bytes) -> str:
        return body.decode("utf-8", errors="replace")

    return {
        "request": text(request_body),
        "legacy": {"status": reference.status, "body": text(reference.body)},
        "candidate": {"status": other.status, "body": text(other.body)},
    }


def judge_verdict(status: int | None, body: bytes) -> Verdict:
    """The judge's answer, {"agree": true|false}; anything else is a judge error, never a verdict."""
    if status is None or not 200 <= status < 300:
        return Verdict(Outcome.JUDGE_ERROR, "no answer" if status is None else f"status {status}")
    doc = _parse(body)
    agree = doc.get("agree") if isinstance(doc, dict) else None
    if not isinstance(agree, bool):
        return Verdict(Outcome.JUDGE_ERROR, 'answer is not {"agree": true|false}')
    return Verdict(Outcome.MATCH, "judge agreed") if agree else Verdict(Outcome.MISMATCH, "judge disagreed")
