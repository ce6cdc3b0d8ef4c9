"""API keys from the in-memory copy of the key table: stale-while-error and its bound (a real
SQLite table made unreadable, a clock the test moves), and no SQL read per made-up key id
(statements counted on the real PostgreSQL engine)."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.featurestore.conftest import FRESH_CARD

LOOKUP = {"features": ["card_profile:credit_limit"], "entities": {"card_id": [FRESH_CARD]}}


def _made_up_token() -> str:
    return f"fsk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def test_the_stale_bound_must_outlive_the_refresh(configure) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="serve_key_stale_seconds"):
        configure(serve_key_refresh_seconds="10", serve_key_stale_seconds="10")


def test_keys_read_before_an_outage_keep_working_for_a_bounded_time(configure) -> None:
    from featurestore.apikeys import KeyStoreUnavailable, KeyVerifier, create_key, revoke_key
    from featurestore.db import engine

    database = engine(configure())
    token, key = create_key(database, "reader", ["features:read"])
    now = [1000.0]
    verifier = KeyVerifier(database, refresh_seconds=5, stale_seconds=60, clock=lambda: now[0])
    verifier.read()

    def verify(candidate: str) -> tuple[str | None, bool]:
        found, stale = asyncio.run(verifier.verify(candidate))
        return (found.key_id if found else None), stale

    assert verify(token) == (key.key_id, False)
    assert verify(token[:-1] + ("A" if token[-1] != "A" else "B")) == (None, False)
    with database.begin() as connection:  # the table unreadable, as in an outage
        connection.execute(sa.text("ALTER TABLE featurestore_api_keys RENAME TO keys_away"))
    now[0] += 5
    verifier.read()
    assert verify(token) == (key.key_id, True)  # stale, and counted as such
    with pytest.raises(KeyStoreUnavailable):
        verify(_made_up_token())  # maybe created since: cannot say 401
    now[0] = 1000.0 + 60.5
    with pytest.raises(KeyStoreUnavailable):
        verify(token)  # past the bound, counted from the last good read
    with database.begin() as connection:
        connection.execute(sa.text("ALTER TABLE keys_away RENAME TO featurestore_api_keys"))
    revoke_key(database, key.key_id)
    now[0] += 1
    verifier.read()
    assert verify(token) == (None, False)


@pytest.mark.spark
@pytest.mark.redis
@pytest.mark.postgres
def test_made_up_key_ids_cost_no_sql_read_each_and_new_keys_work_at_once(served) -> None:
    from featurestore.api.app import create_app
    from featurestore.apikeys import MISS_READ_SECONDS, create_key
    from featurestore.db import engine

    database = engine(served)
    reads = []

    def count(conn, cursor, statement, *args) -> None:
        if "featurestore_api_keys" in statement:
            reads.append(statement)

    app = create_app(served)

    async def scan() -> tuple[list[int], float, int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                sa.event.listen(database, "before_cursor_execute", count)
                try:
                    started = time.monotonic()
                    answers = await asyncio.gather(*(
                        client.post("/v1/online-features", json=LOOKUP,
                                    headers={"Authorization": f"Bearer {_made_up_token()}"})
                        for _ in range(300)
                    ))
                    elapsed = time.monotonic() - started
                finally:
                    sa.event.remove(database, "before_cursor_execute", count)
                token, _ = create_key(database, "new", ["features:read"])
                fresh = await client.post("/v1/online-features", json=LOOKUP,
                                          headers={"Authorization": f"Bearer {token}"})
        return [a.status_code for a in answers], elapsed, fresh.status_code

    statuses, elapsed, fresh = asyncio.run(scan())
    assert set(statuses) == {401}
    # At most one read per MISS_READ_SECONDS for all of them, plus the periodic re-read.
    allowed = 2 + elapsed / MISS_READ_SECONDS + elapsed / served.serve_key_refresh_seconds
    assert len(reads) <= allowed, (len(reads), elapsed)
    assert fresh == 200


_OPERATIONS = st.lists(
    st.one_of(
        st.sampled_from(["fail", "recover", "known", "unknown"]),
        # Clock steps of 0 or >= MISS_READ_SECONDS: a made-up id never waits in real time.
        st.sampled_from([0.0, 1.0, 59.0, 60.0, 61.0, 250.0]),
    ),
    min_size=2,
    max_size=14,
)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_OPERATIONS)
@example([61.0, "known"])  # no read for longer than the bound, database up or not
@example(["fail", 59.0, "known", 1.0, "known", 1.0, "known"])
@example(["fail", "unknown", 1.0, "unknown", "recover", "unknown"])
def test_verdicts_follow_a_naive_model_of_reads_and_outages(configure, operations) -> None:
    """Outages, recoveries, clock steps and verifications in any order: each verdict is what a
    model of two facts says (when the last good read was; whether the table is readable)."""
    from featurestore.apikeys import KeyStoreUnavailable, KeyVerifier, create_key
    from featurestore.db import engine

    database = engine(configure())
    with database.begin() as connection:  # examples share the fixture's database
        connection.execute(sa.text("DROP TABLE IF EXISTS keys_away"))
        connection.execute(sa.text("DELETE FROM featurestore_api_keys"))
    token, key = create_key(database, "model", ["features:read"])
    now = [0.0]
    verifier = KeyVerifier(database, refresh_seconds=5, stale_seconds=60, clock=lambda: now[0])
    verifier.read()
    last_good, readable = 0.0, True

    def rename(old: str, new: str) -> None:
        with database.begin() as connection:
            connection.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))

    try:
        for operation in operations:
            if isinstance(operation, float):
                now[0] += operation
            elif operation == "fail" and readable:
                rename("featurestore_api_keys", "keys_away")
                readable = False
                verifier.read()
            elif operation == "recover" and not readable:
                rename("keys_away", "featurestore_api_keys")
                readable, last_good = True, now[0]
                verifier.read()
            elif operation in ("known", "unknown"):
                candidate = token if operation == "known" else _made_up_token()
                if operation == "unknown" and readable:
                    last_good = now[0]  # a made-up id makes the verifier read the table
                if operation == "unknown" and not readable and last_good < now[0]:
                    expected = "unavailable"  # it may be a key created since the last good read
                elif now[0] - last_good > 60:
                    expected = "unavailable"
                else:
                    expected = (key.key_id if operation == "known" else None, not readable)
                try:
                    found, stale = asyncio.run(verifier.verify(candidate))
                    verdict = (found.key_id if found else None, stale)
                except KeyStoreUnavailable:
                    verdict = "unavailable"
                assert verdict == expected, (operation, now[0], last_good)
    finally:
        if not readable:
            rename("keys_away", "featurestore_api_keys")
