"""The export's pure parts without servers: plan, entity checks, the local join, statistics and
the writer, against naive oracles where there is a rule to check (pyarrow and files only)."""

from __future__ import annotations

import math
import statistics as py_statistics
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import FeastType, Float64, Int64, String
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from featurestore import offline
from featurestore.definitions import Feature, Table, ViewDefinition
from featurestore.errors import (
    DefinitionError,
    FeatureStoreError,
    InputDataError,
    UnknownFeatureViewError,
    UnknownNameError,
)
from featurestore.export.entities import TIMESTAMP_FIELD, check_entities
from featurestore.export.local import join_local
from featurestore.export.plan import ExportPlan, build_plan
from featurestore.export.rows import ROW_TIMESTAMP
from featurestore.export.statistics import TOP_CATEGORIES, Statistics
from featurestore.export.writer import EXPORT_METADATA_KEY, read_export_metadata, write_export
from tests.featurestore.oracle import NO_MATCH, naive_latest

CARD = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64)
SHOP = Entity(name="shop", join_keys=["shop"], value_type=ValueType.STRING)
REQUEST = RequestSource(name="request", schema=[Field(name="amount", dtype=Float64)])


def _view(
    name: str,
    entity: Entity,
    key: Feature,
    features: dict[str, FeastType],
    ttl: timedelta,
    path: Path,
) -> ViewDefinition:
    source = FileSource(
        name=f"{name}_source",
        path=str(path),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )
    feast_view = FeatureView(
        name=name,
        entities=[entity],
        ttl=ttl,
        schema=[Field(name=key.name, dtype=key.dtype)]
        + [Field(name=n, dtype=t) for n, t in features.items()],
        source=source,
    )
    return ViewDefinition(
        name,
        (key,),
        tuple(Feature(f.name, f.dtype) for f in feast_view.features),
        ttl,
        Table(name, path, "event_timestamp", "created"),
        feast_view,
    )


def _ratio(source: FeatureView) -> OnDemandFeatureView:
    @on_demand_feature_view(
        sources=[source, REQUEST],
        schema=[Field(name="amount_ratio", dtype=Float64)],
        mode="python",
    )
    def ratio(inputs: dict[str, list]) -> dict[str, list]:
        return {
            "amount_ratio": [
                a / m if a is not None and m else None
                for a, m in zip(inputs["amount"], inputs["amount_mean"])
            ]
        }

    return ratio


def _registry(root: Path, ttl: timedelta = timedelta(hours=2)):
    cards = _view(
        "card_stats",
        CARD,
        Feature("card_id", Int64),
        {"amount_mean": Float64, "txn_count": Int64},
        ttl,
        root / "card_stats",
    )
    shops = _view(
        "shop_stats",
        SHOP,
        Feature("shop", String),
        {"txn_count": Int64, "category": String},
        timedelta(0),
        root / "shop_stats",
    )
    return {v.name: v for v in (cards, shops)}, {"ratio": _ratio(cards.feast_view)}


VIEWS, ON_DEMAND = _registry(Path("/nonexistent"))
# Every reference the registry can resolve, but txn_count of one view only (the other collides).
REFERENCES = [
    "card_stats:amount_mean",
    "card_stats:txn_count",
    "shop_stats:category",
    "ratio:amount_ratio",
]
# What an on-demand reference makes its source view give: the view's features it reads.
ON_DEMAND_READS = {"ratio": ("card_stats", {"amount_mean", "txn_count"})}


def _plan(*references: str) -> ExportPlan:
    return build_plan(list(references), VIEWS, ON_DEMAND)


# ---------------------------------------------------------------------------------------------
# The plan


@given(st.lists(st.sampled_from(REFERENCES), min_size=1, unique=True))
def test_plan_follows_the_references(references: list[str]) -> None:
    """Naive rule: outputs in reference order; each view gives what is referenced of it plus
    what on-demand references read of it, listed in the order views are first needed."""
    plan = _plan(*references)
    assert plan.references == tuple(references)
    assert plan.outputs == tuple((r.partition(":")[0], _feature(r)) for r in references)
    wanted: dict[str, set[str]] = {}
    for reference in references:
        view, _, feature = reference.partition(":")
        if view in ON_DEMAND_READS:
            source, reads = ON_DEMAND_READS[view]
            wanted.setdefault(source, set()).update(reads)
        else:
            wanted.setdefault(view, set()).add(feature)
    assert [r.view.name for r in plan.views] == list(wanted)
    assert {r.view.name: {f.name for f in r.features} for r in plan.views} == wanted
    assert [k.name for k in plan.join_keys] == [VIEWS[v].join_keys[0].name for v in wanted]
    assert [r.view.name for r in plan.on_demand] == [
        r.partition(":")[0] for r in references if r.startswith("ratio:")
    ]


def _feature(reference: str) -> Feature:
    view, _, name = reference.partition(":")
    if view in ON_DEMAND:
        return Feature(name, Float64)
    return next(f for f in VIEWS[view].features if f.name == name)


@pytest.mark.parametrize(
    ("references", "error", "message"),
    [
        (["nope:x"], UnknownFeatureViewError, "unknown feature view 'nope'"),
        (["card_stats:nope"], UnknownNameError, "has no feature 'nope'"),
        (["ratio:nope"], UnknownNameError, "on-demand feature view 'ratio' has no feature"),
        (["card_stats"], FeatureStoreError, "must look like 'view:feature'"),
        (["card_stats:card_id"], UnknownNameError, "has no feature 'card_id'"),  # a join key
        (
            ["card_stats:txn_count", "shop_stats:txn_count"],
            FeatureStoreError,
            "give the same column name 'txn_count'",
        ),
        (
            ["card_stats:amount_mean", "card_stats:amount_mean"],
            FeatureStoreError,
            "give the same column name",
        ),
    ],
)
def test_plan_names_a_wrong_reference(references, error, message) -> None:
    with pytest.raises(error, match=message):
        _plan(*references)


def test_an_on_demand_view_must_read_a_view_with_an_offline_table() -> None:
    without_cards = {"shop_stats": VIEWS["shop_stats"]}
    with pytest.raises(DefinitionError, match="reads 'card_stats', which is not a feature view"):
        build_plan(["ratio:amount_ratio"], without_cards, ON_DEMAND)


# ---------------------------------------------------------------------------------------------
# The entity table

T0 = datetime(2026, 3, 1, 20, tzinfo=UTC)
PLAN = _plan("card_stats:amount_mean", "shop_stats:category", "ratio:amount_ratio")


def _entities(rows: int = 3, **columns: pa.Array) -> pa.Table:
    base = {
        "card_id": pa.array(range(rows), pa.int64()),
        "shop": pa.array([f"s{i}" for i in range(rows)], pa.string()),
        "amount": pa.array([1.5] * rows, pa.float64()),
        TIMESTAMP_FIELD: pa.array([T0] * rows, ROW_TIMESTAMP),
    }
    return pa.table({**base, **columns})


def _problems(table: pa.Table) -> str:
    with pytest.raises(InputDataError) as raised:
        check_entities(table, PLAN)
    return str(raised.value)


def test_a_good_entity_table_passes_with_keys_typed_as_declared() -> None:
    table = _entities(
        card_id=pa.array([1, 2, 3], pa.int32()), shop=pa.array(["a", "b", "c"], pa.large_string())
    )
    checked = check_entities(table, PLAN)
    assert checked.table is table
    assert checked.keys["card_id"].type == pa.int64() and checked.keys["card_id"].to_pylist() == [
        1,
        2,
        3,
    ]
    assert checked.keys["shop"].type == pa.string()


def test_every_problem_is_named_at_once() -> None:
    table = _entities(card_id=pa.array([1.0, 2.0, 3.0])).drop_columns([TIMESTAMP_FIELD, "amount"])
    table = table.append_column("category", pa.array(["x"] * 3))
    message = _problems(table)
    assert message.startswith("entity table: ")
    for part in [
        f"no column {TIMESTAMP_FIELD!r}",
        "column 'card_id' is double, expected int64 (join key)",
        "no column 'amount' (request field of on-demand view 'ratio')",
        "columns ['category'] have the names of exported features",
    ]:
        assert part in message


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({TIMESTAMP_FIELD: pa.array(["2026-03-01"] * 3)}, "is string, expected a timestamp"),
        (
            {TIMESTAMP_FIELD: pa.array([T0, None, None], ROW_TIMESTAMP)},
            f"column {TIMESTAMP_FIELD!r} has 2 null value(s)",
        ),
        ({"card_id": pa.array([1, None, 3], pa.int64())}, "has 1 null value(s) (join key)"),
        ({"shop": pa.array([None, None, None], pa.string())}, "has 3 null value(s) (join key)"),
        # A width that cannot hold every value is not the declared type.
        ({"card_id": pa.array([2**63, 1, 2], pa.uint64())}, "is uint64, expected int64"),
        ({"amount": pa.array([True, False, True])}, "is bool, expected double"),
    ],
)
def test_a_bad_column_is_named(columns, message) -> None:
    assert message in _problems(_entities(**columns))


def test_an_empty_entity_table_is_named_after_its_other_problems() -> None:
    assert _problems(_entities(0)) == "entity table: it has no rows (nothing to export)"
    assert _problems(_entities(0).drop_columns(["shop"])).endswith(
        "no column 'shop' (join key, string); it has no rows (nothing to export)"
    )


@pytest.mark.parametrize(
    "times",
    [
        pa.array(
            [datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)], pa.timestamp("us")
        ),
        pa.array([datetime(1, 1, 1, tzinfo=UTC), T0], pa.timestamp("us", tz="UTC")),
        pa.array([T0, T0], pa.timestamp("ns", tz="Europe/Paris")),
        pa.array([0, 253402300799], pa.timestamp("s")),
    ],
)
def test_any_timestamp_passes_naive_or_aware_to_the_ends_of_the_range(times) -> None:
    table = _entities(2, **{TIMESTAMP_FIELD: times})
    assert check_entities(table, PLAN).times.equals(times)


def test_duplicate_entity_rows_are_rows() -> None:
    table = _entities(3, card_id=pa.array([7, 7, 7], pa.int64()), shop=pa.array(["s"] * 3))
    assert check_entities(table, PLAN).keys["card_id"].to_pylist() == [7, 7, 7]


# ---------------------------------------------------------------------------------------------
# The local join against the row-by-row oracle

# Minutes on the ttls' grid: same-time ties, and rows exactly at an entity row's ttl edge.
HALF_HOURS = st.integers(-2, 20).map(lambda k: 30 * k)
# Feature rows: (card or None, minutes after T0, created hour or None); T0 is 20:00, so the
# rows and the ttl windows span midnight and the join reads two days' partitions.
feature_rows = st.lists(
    st.tuples(
        st.sampled_from([None, 0, 1, 2]),
        st.one_of(HALF_HOURS, st.integers(0, 600)),
        st.one_of(st.none(), st.integers(0, 2)),
    ),
    max_size=40,
)
# Entity rows: (card, microseconds after T0): on the rows' minutes (ts == t and ttl edges hit
# exactly), a microsecond after them, or between; before T0 too.
entity_rows = st.lists(
    st.tuples(
        st.integers(0, 3),  # card 3 has no rows
        st.builds(
            lambda minutes, micros: minutes * 60_000_000 + micros,
            st.one_of(HALF_HOURS, st.integers(-60, 700)),
            st.sampled_from([0, 0, 1, 30_000_000]),
        ),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    feature_rows,
    entity_rows,
    st.sampled_from([timedelta(0), timedelta(minutes=30), timedelta(hours=2)]),
    st.integers(1, 8),
)
# Two rows at one time: the greater created time wins, wherever it is in the file.
@example(
    [(1, 0, 2), (1, 0, 1), (1, 30, None), (1, 30, 0)], [(1, 0), (1, 1_800_000_000)], timedelta(0), 1
)
# A row exactly at the ttl edge of an entity row (valid), and one a microsecond past it.
@example([(1, 0, None)], [(1, 30 * 60_000_000), (1, 30 * 60_000_000 + 1)], timedelta(minutes=30), 1)
def test_local_join_matches_the_oracle(rows, entities, ttl, chunk_rows) -> None:
    with tempfile.TemporaryDirectory() as root:
        views, on_demand = _registry(Path(root), ttl)
        plan = build_plan(["card_stats:amount_mean", "card_stats:txn_count"], views, on_demand)
        table = pa.table(
            {
                "card_id": pa.array([r[0] for r in rows], pa.int64()),
                "event_timestamp": pa.array(
                    [T0 + timedelta(minutes=r[1]) for r in rows], ROW_TIMESTAMP
                ),
                "created": pa.array(
                    [None if r[2] is None else T0 + timedelta(hours=r[2]) for r in rows],
                    ROW_TIMESTAMP,
                ),
                "amount_mean": pa.array([float(i) for i in range(len(rows))]),
                "txn_count": pa.array(range(len(rows)), pa.int64()),
            }
        )
        offline.write_days(Path(root) / "card_stats", table, "event_timestamp", "part.parquet")
        (Path(root) / "card_stats").mkdir(exist_ok=True)  # no rows: an empty table
        entity_table = _entities(
            len(entities),
            card_id=pa.array([e[0] for e in entities], pa.int64()),
            **{
                TIMESTAMP_FIELD: pa.array(
                    [T0 + timedelta(microseconds=e[1]) for e in entities], ROW_TIMESTAMP
                )
            },
        )
        chunks = list(
            join_local(plan, check_entities(entity_table, plan), lambda _: None, chunk_rows)
        )

    assert len(chunks) == math.ceil(len(entities) / chunk_rows)
    got = [v for c in chunks for v in c["card_stats", "txn_count"].to_pylist()]
    means = [v for c in chunks for v in c["card_stats", "amount_mean"].to_pylist()]
    micros = 1_000
    expected = naive_latest(
        [(e[0],) for e in entities],
        [(_micros(T0) + e[1]) * micros for e in entities],
        [(r[0],) for r in rows],
        [(_micros(T0) + r[1] * 60_000_000) * micros for r in rows],
        [None if r[2] is None else (_micros(T0) + r[2] * 3_600_000_000) * micros for r in rows],
        ttl,
    )
    assert got == [None if j == NO_MATCH else j for j in expected]
    assert means == [None if j == NO_MATCH else float(j) for j in expected]


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_local_join_at_the_ends_of_the_datetime_range(tmp_path) -> None:
    """A ttl reaching before year 1 and an entity at the last microsecond of 9999 read the
    partitions there are, and match by the same rule."""
    views, on_demand = _registry(tmp_path, timedelta(days=2))
    plan = build_plan(["card_stats:txn_count"], views, on_demand)
    last = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    first = datetime(1, 1, 1, tzinfo=UTC)
    rows = pa.table(
        {
            "card_id": pa.array([1, 1], pa.int64()),
            "event_timestamp": pa.array([first, last - timedelta(days=1)], ROW_TIMESTAMP),
            "created": pa.array([None, None], ROW_TIMESTAMP),
            "amount_mean": [1.0, 2.0],
            "txn_count": pa.array([10, 20], pa.int64()),
        }
    )
    offline.write_days(tmp_path / "card_stats", rows, "event_timestamp", "part.parquet")
    entities = _entities(
        3,
        card_id=pa.array([1, 1, 1], pa.int64()),
        **{TIMESTAMP_FIELD: pa.array([first, first + timedelta(days=3), last], ROW_TIMESTAMP)},
    )
    (chunk,) = join_local(plan, check_entities(entities, plan), lambda _: None, 100)
    assert chunk["card_stats", "txn_count"].to_pylist() == [10, None, 20]


# ---------------------------------------------------------------------------------------------
# Statistics against a one-pass naive summary, whatever the chunking

numbers = st.lists(
    st.one_of(st.none(), st.just(math.nan), st.floats(-1e6, 1e6, allow_nan=False)), max_size=60
)
integers = st.lists(st.one_of(st.none(), st.integers(-(10**9), 10**9)), max_size=60)
words = st.lists(st.one_of(st.none(), st.sampled_from([f"w{i}" for i in range(70)])), max_size=200)


def _naive(values: list, kind: str) -> dict:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    figures: dict = {"count": len(present), "null_count": len(values) - len(present)}
    if kind == "string":
        ranked = sorted(Counter(present).items(), key=lambda item: (-item[1], item[0]))
        return figures | {"categories": dict(ranked[:TOP_CATEGORIES])}
    return figures | {
        "mean": py_statistics.fmean(present) if present else None,
        "std": py_statistics.stdev(present) if len(present) > 1 else None,
        "min": min(present) if present else None,
        "max": max(present) if present else None,
    }


@settings(max_examples=80, deadline=None)
@given(st.data(), st.sampled_from(["double", "int64", "string"]))
def test_statistics_equal_the_naive_summary_whatever_the_chunks(data, kind) -> None:
    values = data.draw({"double": numbers, "int64": integers, "string": words}[kind])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=5)))
    column = pa.array(values, pa.float64() if kind == "double" else getattr(pa, kind)())
    schema = pa.schema([("x", column.type)])
    summary = Statistics(schema)
    for start, stop in zip([0, *cuts], [*cuts, len(values)]):
        summary.add(pa.table({"x": column.slice(start, stop - start)}))

    got, want = summary.result()["x"], _naive(values, kind)
    assert got.keys() == want.keys()
    for figure, value in want.items():
        if isinstance(value, float):
            assert got[figure] == pytest.approx(value, rel=1e-9, abs=1e-6), figure
        else:
            assert got[figure] == value, figure


def test_statistics_of_infinite_values_are_none_not_json_breaking() -> None:
    summary = Statistics(pa.schema([("x", pa.float64())]))
    summary.add(pa.table({"x": [1.0, math.inf]}))
    got = summary.result()["x"]
    assert (got["mean"], got["std"], got["max"], got["min"]) == (None, None, None, 1.0)


# ---------------------------------------------------------------------------------------------
# The writer

SCHEMA = pa.schema([("card_id", pa.int64()), ("name", pa.string())])


def _chunk(*ids: int) -> pa.Table:
    return pa.table({"card_id": list(ids), "name": [f"n{i}" for i in ids]}, schema=SCHEMA)


def test_each_chunk_is_a_row_group_and_the_description_is_the_metadata(tmp_path) -> None:
    path = tmp_path / "out.parquet"
    description = {"export_id": "exp-1", "rows": 5, "statistics": {"card_id": {"count": 5}}}
    write_export(path, SCHEMA, [_chunk(1, 2), _chunk(3), _chunk(4, 5)], lambda: description)
    assert pq.read_metadata(path).num_row_groups == 3
    assert (
        pq.read_table(path)
        .replace_schema_metadata(None)
        .equals(pa.concat_tables([_chunk(1, 2), _chunk(3), _chunk(4, 5)]))
    )
    assert read_export_metadata(path) == description
    assert EXPORT_METADATA_KEY.encode() in pq.read_schema(path).metadata  # readers' schema too


def _failing_chunks():
    yield _chunk(1, 2)
    yield _chunk(3)
    raise RuntimeError("the join failed half-way")


@pytest.mark.parametrize("existing", [True, False])
@pytest.mark.parametrize("failure", ["chunks", "describe"])
def test_a_failure_half_way_leaves_the_old_file_and_nothing_partial(
    tmp_path, existing, failure
) -> None:
    """Row groups already written go to a hidden file that is removed: no reader ever sees a
    partial export, under the final name or another."""
    path = tmp_path / "out.parquet"
    if existing:
        path.write_bytes(b"the previous export")

    def describe() -> dict:
        raise RuntimeError("the description failed")

    chunks = _failing_chunks() if failure == "chunks" else [_chunk(1), _chunk(2)]
    with pytest.raises(RuntimeError, match="failed"):
        write_export(path, SCHEMA, chunks, describe if failure == "describe" else dict)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.parquet"] if existing else [])
    if existing:
        assert path.read_bytes() == b"the previous export"


_KILLED_WRITER = """
import sys
from pathlib import Path

import pyarrow as pa

from featurestore.export.writer import write_export

schema = pa.schema([("card_id", pa.int64())])


def chunks():
    for i in range(2):
        yield pa.table({"card_id": list(range(i * 1000, (i + 1) * 1000))}, schema=schema)
    print("row groups written", flush=True)  # the first written, the second in flight
    sys.stdin.read()  # until killed


write_export(Path(sys.argv[1]), schema, chunks(), dict)
"""


def test_a_writer_killed_half_way_leaves_the_old_file_for_every_reader(tmp_path) -> None:
    """SIGKILL runs no cleanup: the partial file stays, hidden from Parquet readers by its
    leading dot, and the export's name still holds the previous export."""
    path = tmp_path / "out.parquet"
    pq.write_table(_chunk(1), path)
    before = path.read_bytes()
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "row groups written\n"
    finally:
        writer.kill()
        writer.wait()
    assert path.read_bytes() == before
    (partial,) = [p for p in tmp_path.iterdir() if p != path]
    assert partial.name.startswith(".")
    assert ds.dataset(str(tmp_path), format="parquet").files == [str(path)]


def test_read_export_metadata_names_what_a_file_is_not(tmp_path) -> None:
    plain, garbage = tmp_path / "plain.parquet", tmp_path / "garbage.parquet"
    pq.write_table(_chunk(1), plain)
    garbage.write_bytes(b"not parquet")
    with pytest.raises(InputDataError, match="is not a featurestore export"):
        read_export_metadata(plain)
    with pytest.raises(InputDataError, match="is not a readable Parquet file"):
        read_export_metadata(garbage)
