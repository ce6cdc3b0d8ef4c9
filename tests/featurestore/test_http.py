"""The HTTP plumbing's pure parts: the 422 body and the check of strings bound for SQL, against
naive oracles on arbitrary text (lone surrogates, NUL) and integers (beyond 64 bits); and the
error shape of a bug's 500."""

from __future__ import annotations

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from featurestore.api.http import install_error_handlers, malformed_body
from featurestore.api.schemas import StoredText

# Any code point, lone surrogates and NUL included.
TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=20)
INTEGERS = st.integers(min_value=-(2**80), max_value=2**80)
PROBLEM = st.fixed_dictionaries({
    "type": st.sampled_from(["int_type", "value_error", "extra_forbidden"]),
    "loc": st.lists(st.one_of(TEXT, st.text(min_size=81, max_size=200), st.integers(0, 10**6)),
                    max_size=4),
    "msg": TEXT,
    "input": st.one_of(TEXT, INTEGERS, st.none()),
})


def _problem(loc: list, value: object = "x") -> dict:
    return {"type": "value_error", "loc": loc, "msg": "bad \ud800", "input": value}


# Generating lists of up to 30 problems is the cost of this test: fewer drawn examples, and the
# edges pinned: 20 problems (all listed) and 21 (one "more"), keys at and over the 80-character
# cut, a lone surrogate astride the cut, integers in the path and beyond 64 bits in the input.
EDGE_LOC = ["a" * 80, "b" * 79 + "\udfff" + "c", 10**6, "\x00"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(PROBLEM, max_size=30))
@example([])
@example([_problem(EDGE_LOC, 2**80)] * 20)
@example([_problem(EDGE_LOC, -(2**80))] * 21)
@example([_problem([], None), _problem(["body", "x" * 200])])
def test_a_422_body_always_encodes_lists_a_bounded_number_and_never_the_input(errors) -> None:
    body = malformed_body(errors)
    encoded = orjson.loads(orjson.dumps(body))  # encodable, whatever the input held
    details = encoded["error"]["details"]
    assert len(details) == min(len(errors), 20)
    assert all(set(detail) == {"type", "loc", "msg"} for detail in details)
    for detail, problem in zip(details, errors):
        assert len(detail["loc"]) == len(problem["loc"])
        for shown, sent in zip(detail["loc"], problem["loc"]):  # a key: cut, surrogates escaped
            if isinstance(sent, str):
                assert shown == sent[:80].encode("utf-8", "backslashreplace").decode()
        assert [p for p in detail["loc"] if isinstance(p, int)] == [
            p for p in problem["loc"] if isinstance(p, int)
        ]
    assert (f"and {len(errors) - 20} more" in encoded["error"]["message"]) == (len(errors) > 20)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(TEXT)
def test_stored_text_takes_exactly_what_postgresql_can_store(text) -> None:
    storable = "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    try:
        assert TypeAdapter(StoredText).validate_python(text) == text
        taken = True
    except ValidationError:
        taken = False
    assert taken == storable


def test_a_bug_is_a_500_in_the_error_shape() -> None:
    app = FastAPI()
    install_error_handlers(app, retry_after_seconds=1)

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/bug")
    assert response.status_code == 500
    assert response.json() == {"error": {
        "code": "internal_error", "message": "internal server error (the server log has the details)"
    }}


@pytest.mark.parametrize("moment", ["2026-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"])
def test_iso_datetimes_are_strings_only(moment) -> None:
    from featurestore.api.schemas import IsoDatetime

    parsed = TypeAdapter(IsoDatetime)
    assert parsed.validate_python(moment).tzinfo is not None
    for not_a_string in (0, 1.5, True):
        with pytest.raises(ValidationError, match="ISO-8601"):
            parsed.validate_python(not_a_string)
