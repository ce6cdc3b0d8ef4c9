"""Seeded synthetic card payments: transactions, their late fraud labels and daily card profiles.

Writes the three raw datasets `feature_repo/fraud.py` declares, as Hive-partitioned Parquet
(`<dataset>/event_date=YYYY-MM-DD/part-00000.parquet`), one day at a time, so memory grows with
the rows of one day rather than with the history. Each day draws from its own random streams,
seeded from `(seed, day index, stream)`: a day's data is the same whether 1 or 1000 days are
generated, and switching on one drift option changes only the values that option is about.

What the data exercises downstream:
- gamma-distributed card rates, a daily cycle in the card's local time, log-normal amounts with a
  per-card scale, Zipf-popular merchants, mostly-domestic countries with their currencies;
- fraud bursts: a compromised card makes several high, foreign, e-commerce payments within minutes;
- ties: about 1% of payments are split in two at the very same microsecond, and timestamps come at
  second, millisecond and microsecond resolution;
- labels that become known hours to days after the payment;
- optional drift from `drift_start` on: amount scale, country mix, bursts of nulls.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa

from featurestore import offline

TRANSACTIONS = "transactions"
LABELS = "labels"
CARD_PROFILES = "card_profiles"
DATASETS = (TRANSACTIONS, LABELS, CARD_PROFILES)
PART_FILE = "part-00000.parquet"

_TIMESTAMP = pa.timestamp("us", tz="UTC")
SCHEMAS: Mapping[str, pa.Schema] = MappingProxyType({
    TRANSACTIONS: pa.schema([
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("card_id", pa.int64(), nullable=False),
        pa.field("merchant_id", pa.int64(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        ("merchant_category", pa.string()),  # null in drift scenarios (--null-burst-rate)
        ("country", pa.string()),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("event_timestamp", _TIMESTAMP, nullable=False),
    ]),
    LABELS: pa.schema([
        ("transaction_id", pa.string()),
        ("card_id", pa.int64()),
        ("event_timestamp", _TIMESTAMP),
        ("is_fraud", pa.bool_()),
        ("label_timestamp", _TIMESTAMP),
    ]),
    CARD_PROFILES: pa.schema([
        ("card_id", pa.int64()),
        ("event_timestamp", _TIMESTAMP),
        ("credit_limit", pa.float64()),
        ("card_age_days", pa.int64()),
        ("home_country", pa.string()),
        ("card_tier", pa.string()),
    ]),
})

# Bounded by the sort key (row index in 26 bits beside the microsecond of day) and by the
# int32 offsets of an Arrow `string` column holding the day's transaction ids.
MAX_ROWS_PER_DAY = 50_000_000
_ROW_BITS = 26

# Dictionary encoding pays only for low-cardinality columns; on ids and timestamps it is wasted work.
_DICTIONARY_COLUMNS = {
    TRANSACTIONS: ["currency", "merchant_category", "country", "channel"],
    LABELS: [],
    CARD_PROFILES: ["credit_limit", "home_country", "card_tier"],
}

_SECOND_US = 1_000_000
_HOUR_US = 3600 * _SECOND_US
_DAY_US = 24 * _HOUR_US
_EPOCH = date(1970, 1, 1)

# Country: share of cards issued there, UTC offset of its daytime (hours), local currency.
_COUNTRIES = (
    ("US", 0.34, -5, "USD"),
    ("GB", 0.12, 0, "GBP"),
    ("DE", 0.10, 1, "EUR"),
    ("FR", 0.08, 1, "EUR"),
    ("CA", 0.06, -5, "CAD"),
    ("ES", 0.05, 1, "EUR"),
    ("IT", 0.05, 1, "EUR"),
    ("NL", 0.04, 1, "EUR"),
    ("AU", 0.04, 10, "AUD"),
    ("JP", 0.03, 9, "JPY"),
    ("BR", 0.03, -3, "BRL"),
    ("MX", 0.02, -6, "MXN"),
    ("CH", 0.02, 1, "CHF"),
    ("IN", 0.01, 5, "INR"),
    ("SG", 0.01, 8, "SGD"),
)
_COUNTRY_CODES = tuple(c[0] for c in _COUNTRIES)
_HOME_WEIGHTS = np.array([c[1] for c in _COUNTRIES])
_UTC_OFFSET_H = np.array([c[2] for c in _COUNTRIES], dtype=np.int64)
_CURRENCY_CODES = tuple(sorted({c[3] for c in _COUNTRIES}))
_COUNTRY_CURRENCY = np.array([_CURRENCY_CODES.index(c[3]) for c in _COUNTRIES])
# Countries a drift mix introduces have no table entry; cross-border acquirers settle in USD.
_FALLBACK_CURRENCY = _CURRENCY_CODES.index("USD")
_ABROAD_RATE = 0.04
# Dynamic currency conversion: the terminal charges in the card's home currency.
_HOME_CURRENCY_RATE = 0.05

# Merchant category: share of merchants, amount multiplier relative to the card's typical spend.
_CATEGORIES = (
    ("grocery", 0.22, 0.9),
    ("restaurants", 0.18, 0.7),
    ("retail", 0.17, 1.3),
    ("fuel", 0.08, 1.2),
    ("digital_goods", 0.08, 0.4),
    ("entertainment", 0.07, 0.8),
    ("health", 0.06, 1.1),
    ("electronics", 0.05, 3.5),
    ("cash_withdrawal", 0.05, 2.5),
    ("travel", 0.04, 5.0),
)
_CATEGORY_NAMES = tuple(c[0] for c in _CATEGORIES)
_CATEGORY_SHARES = np.array([c[1] for c in _CATEGORIES])
_CATEGORY_LOG_MULT = np.log([c[2] for c in _CATEGORIES])
_CAT_DIGITAL = _CATEGORY_NAMES.index("digital_goods")
_CAT_CASH = _CATEGORY_NAMES.index("cash_withdrawal")
_CAT_TRAVEL = _CATEGORY_NAMES.index("travel")
# Where stolen card details get cashed out: goods that resell, or that need no delivery address.
_RISKY_CATEGORIES = [_CATEGORY_NAMES.index(c) for c in ("electronics", "digital_goods", "travel")]

_CHANNEL_NAMES = ("pos", "contactless", "ecom", "atm")
_CHANNEL_WEIGHTS = np.array([0.45, 0.35, 0.20, 0.0])
_CH_ECOM = _CHANNEL_NAMES.index("ecom")
_CH_ATM = _CHANNEL_NAMES.index("atm")
_TRAVEL_ECOM_RATE = 0.7

# Tier: share of cards, log-offset of typical spend, credit limit range at issue, credit limit cap.
_TIERS = (
    ("standard", 0.70, 0.0, 1_000, 8_000, 15_000),
    ("gold", 0.22, 0.35, 5_000, 20_000, 40_000),
    ("platinum", 0.08, 0.8, 15_000, 50_000, 100_000),
)
_TIER_NAMES = tuple(t[0] for t in _TIERS)
_TIER_WEIGHTS = np.array([t[1] for t in _TIERS])
_TIER_LOG_SPEND = np.array([t[2] for t in _TIERS])
_TIER_LIMIT_LOW = np.array([t[3] for t in _TIERS], dtype=np.float64)
_TIER_LIMIT_HIGH = np.array([t[4] for t in _TIERS], dtype=np.float64)
_TIER_LIMIT_CAP = np.array([t[5] for t in _TIERS], dtype=np.float64)
_TIER_STANDARD = _TIER_NAMES.index("standard")
_TIER_GOLD = _TIER_NAMES.index("gold")
_UPGRADE_AFTER_REVIEWS = 2
_LIMIT_REVIEW_FACTOR = 1.1
_REVIEW_PERIOD_DAYS = (60, 720)

# Relative activity per local hour of day: quiet nights, lunch and early-evening peaks.
_HOUR_WEIGHTS = np.array([
    0.6, 0.4, 0.3, 0.25, 0.3, 0.5, 1.0, 2.0, 3.2, 4.0, 4.5, 5.0,
    5.6, 5.4, 5.0, 4.8, 5.0, 5.6, 6.0, 5.8, 4.8, 3.6, 2.4, 1.2,
])
_WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.1, 1.15, 0.85])
# Terminals report time at different resolutions: shares truncated to whole seconds and to whole
# milliseconds; the rest keep microseconds.
_SECOND_RESOLUTION_RATE = 0.4
_MILLI_RESOLUTION_RATE = 0.2

# A gamma shape below ~2 gives the long tail of very active cards real portfolios show.
_RATE_SHAPE = 1.5
_TYPICAL_AMOUNT = 30.0
_CARD_SCALE_SIGMA = 0.45
_AMOUNT_SIGMA = 0.8
_MIN_AMOUNT_CENTS = 50
_ZIPF_EXPONENT = 0.8

_BURST_BASE_LEN = 3
_BURST_EXTRA_MEAN = 2.5
_BURST_MAX_LEN = 12
_BURST_GAP_MEAN_US = 45 * _SECOND_US
_BURST_GAP_RANGE_US = (_SECOND_US, 300 * _SECOND_US)
_FRAUD_LOG_MULT = math.log(6.0)
_FRAUD_AMOUNT_SIGMA = 0.5
# Chargebacks and friendly fraud outside any burst, so `is_fraud` is not a pure burst detector.
_BACKGROUND_FRAUD_RATE = 0.0003

_SPLIT_SHARE_RANGE = (0.3, 0.7)

# Label delay, log-normal in hours: fraud is reported sooner than legitimate payments are confirmed.
_LABEL_MEDIAN_H_FRAUD = 18.0
_LABEL_MEDIAN_H_LEGIT = 48.0
_LABEL_DELAY_SIGMA = 0.9
_LABEL_DELAY_RANGE_US = (_HOUR_US, 21 * _DAY_US)


class _Stream(IntEnum):
    """Independent random streams, so one option changing its draws leaves the others alone."""

    POPULATION = 0
    VOLUME = 1
    TIMES = 2
    MERCHANTS = 3
    AMOUNTS = 4
    PLACES = 5
    CHANNELS = 6
    FRAUD = 7
    SPLITS = 8
    RESOLUTION = 9
    NULLS = 10
    LABELS = 11


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Validated on construction; every error names the offending field.

    `compromised_card_rate` is the chance a card is compromised on a given day (it then makes one
    fraud burst that day); `split_payment_rate` is the share of payments split in two at the same
    microsecond. The drift options apply to days on or after `drift_start` only:
    `amount_shift` multiplies every amount, `amount_spread` multiplies the spread of a card's
    log-amounts around their typical value (a variance change at the same median), `country_mix` (country code -> weight, normalized)
    replaces the country distribution of ordinary payments, `null_burst_rate` is the share of rows
    whose `merchant_category` and `country` are null.
    """

    start: date
    days: int
    cards: int
    merchants: int
    seed: int = 7
    mean_daily_txn_per_card: float = 2.0
    compromised_card_rate: float = 0.001
    split_payment_rate: float = 0.01
    drift_start: date | None = None
    amount_shift: float = 1.0
    amount_spread: float = 1.0
    country_mix: Mapping[str, float] | None = None
    null_burst_rate: float = 0.0

    def __post_init__(self) -> None:
        _check_date("start", self.start)
        if self.drift_start is not None:
            _check_date("drift_start", self.drift_start)
        for name, minimum in (("days", 1), ("cards", 1), ("merchants", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        _check_real("mean_daily_txn_per_card", self.mean_daily_txn_per_card, low=0.0,
                    low_open=True)
        _check_real("amount_shift", self.amount_shift, low=0.0, low_open=True)
        _check_real("amount_spread", self.amount_spread, low=0.0, low_open=True)
        for name in ("compromised_card_rate", "split_payment_rate", "null_burst_rate"):
            _check_real(name, getattr(self, name), low=0.0, high=1.0)
        if self.cards * self.mean_daily_txn_per_card > MAX_ROWS_PER_DAY / 2:
            raise ValueError(
                f"mean_daily_txn_per_card × cards must stay below {MAX_ROWS_PER_DAY // 2:,} "
                f"rows per day, got {self.cards * self.mean_daily_txn_per_card:,.0f}"
            )
        if self.country_mix is not None:
            object.__setattr__(self, "country_mix", _checked_country_mix(self.country_mix))
        drifting = (self.amount_shift != 1.0 or self.amount_spread != 1.0
                    or self.country_mix is not None or self.null_burst_rate > 0.0)
        if drifting and self.drift_start is None:
            raise ValueError("drift_start is required when a drift option (amount_shift, "
                             "amount_spread, country_mix, null_burst_rate) is set")

    @property
    def dates(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    def drifts_on(self, day: date) -> bool:
        return self.drift_start is not None and day >= self.drift_start


@dataclass
class GenerateSummary:
    """What `generate` wrote: row counts per dataset name and every file, in write order."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    files: list[Path] = field(default_factory=list)


def partition_file(raw_dir: Path, dataset: str, day: date) -> Path:
    """The one Parquet file holding `dataset`'s rows of event date `day`."""
    return Path(raw_dir) / dataset / f"event_date={day.isoformat()}" / PART_FILE


def generate(
    config: GeneratorConfig,
    raw_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Write every day of `config` under `raw_dir`, replacing that day's files if present.

    `progress`, if given, is called after each day with the number of transaction rows written
    for that day (an increment, as `rich.progress.Progress.advance` takes).
    """
    population = _Population.draw(config)
    summary = GenerateSummary()

    def write_day(day: date, tables: dict[str, pa.Table]) -> None:
        for dataset in DATASETS:
            path = partition_file(raw_dir, dataset, day)
            offline.write_atomically(
                tables[dataset], path, use_dictionary=_DICTIONARY_COLUMNS[dataset]
            )
            summary.rows[dataset] += tables[dataset].num_rows
            summary.files.append(path)

    # Day d is written on a second thread while day d+1 is drawn: Parquet encoding releases the
    # GIL, so the two overlap. Waiting for one write before queueing the next keeps at most two
    # days in memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator-writer") as writer:
        pending: tuple[Future[None], int] | None = None
        for day_index, day in enumerate(config.dates):
            tables = _day_tables(config, population, day_index, day)
            if pending is not None:
                _finish(pending, progress)
            pending = (writer.submit(write_day, day, tables), tables[TRANSACTIONS].num_rows)
            del tables
        if pending is not None:
            _finish(pending, progress)
    return summary


def transactions(config: GeneratorConfig, first_day: date | None = None) -> Iterator[pa.Table]:
    """The transactions of each day of `config` from `first_day` on, in event-time order.

    Nothing is written: this is the live traffic `featurestore example produce` sends. Each day
    is drawn exactly as `generate` draws it, so the stream continues a generated history.
    """
    population = _Population.draw(config)
    for day_index, day in enumerate(config.dates):
        if first_day is None or day >= first_day:
            yield _day_tables(config, population, day_index, day)[TRANSACTIONS]


def _finish(pending: tuple[Future[None], int], progress: Callable[[int], None] | None) -> None:
    write, transaction_rows = pending
    write.result()
    if progress is not None:
        progress(transaction_rows)


# ---------------------------------------------------------------------------------------------
# Drawing


def _rng(seed: int, stream: _Stream, day_index: int | None = None) -> np.random.Generator:
    key = (int(stream),) if day_index is None else (int(stream), day_index)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights, dtype=np.float64)
    return cdf / cdf[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn with the probabilities `cdf` accumulates (exact inverse-CDF sampling)."""
    picked = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(picked, cdf.size - 1)


class _Choice:
    """Draws category indices from a lookup table of 2**16 slots.

    Several times faster than searching a CDF per row, which matters at millions of rows a day;
    each weight is resolved to 1/65536, ample for these mixes (a weight below that never draws).
    """

    _SLOTS = 1 << 16

    def __init__(self, weights: np.ndarray | list[float]) -> None:
        cdf = _cdf(np.asarray(weights, dtype=np.float64))
        if cdf.size > np.iinfo(np.int16).max:
            raise ValueError(f"at most {np.iinfo(np.int16).max} categories, got {cdf.size}")
        middles = (np.arange(self._SLOTS) + 0.5) / self._SLOTS
        picked = np.minimum(np.searchsorted(cdf, middles, side="right"), cdf.size - 1)
        self.table = picked.astype(np.int16)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.table[rng.integers(0, self._SLOTS, size, dtype=np.uint16)]


_HOME_CHOICE = _Choice(_HOME_WEIGHTS)
_HOUR_CHOICE = _Choice(_HOUR_WEIGHTS)
_CHANNEL_CHOICE = _Choice(_CHANNEL_WEIGHTS)
_CATEGORY_CHOICE = _Choice(_CATEGORY_SHARES)
_TIER_CHOICE = _Choice(_TIER_WEIGHTS)


@dataclass(frozen=True)
class _Population:
    """The cards and merchants: drawn once per config, fixed across days (memory ∝ cards)."""

    rate: np.ndarray
    log_scale: np.ndarray
    home: np.ndarray
    tier: np.ndarray
    age_at_start: np.ndarray
    base_limit: np.ndarray
    review_period: np.ndarray
    review_phase: np.ndarray
    merchant_category: np.ndarray
    merchant_cdf: np.ndarray
    risky_merchants: np.ndarray

    @classmethod
    def draw(cls, config: GeneratorConfig) -> _Population:
        rng = _rng(config.seed, _Stream.POPULATION)
        n = config.cards
        tier = _TIER_CHOICE.draw(rng, n)
        rate = rng.gamma(_RATE_SHAPE, config.mean_daily_txn_per_card / _RATE_SHAPE, n)
        log_scale = (rng.normal(math.log(_TYPICAL_AMOUNT), _CARD_SCALE_SIGMA, n)
                     + _TIER_LOG_SPEND[tier])
        home = _HOME_CHOICE.draw(rng, n)
        age_at_start = rng.integers(30, 3650, n)
        base_limit = np.round(rng.uniform(_TIER_LIMIT_LOW[tier], _TIER_LIMIT_HIGH[tier]), -2)
        review_period = rng.integers(*_REVIEW_PERIOD_DAYS, n)
        review_phase = rng.integers(0, review_period)

        m = config.merchants
        merchant_category = _CATEGORY_CHOICE.draw(rng, m)
        # Popularity ranks are shuffled so the busiest merchants are not simply the lowest ids.
        rank = rng.permutation(m) + 1
        merchant_cdf = _cdf(rank.astype(np.float64) ** -_ZIPF_EXPONENT)
        risky = np.flatnonzero(np.isin(merchant_category, _RISKY_CATEGORIES))
        if risky.size == 0:
            risky = np.arange(m)
        return cls(rate, log_scale, home, tier, age_at_start, base_limit, review_period,
                   review_phase, merchant_category, merchant_cdf, risky)


def _day_tables(
    config: GeneratorConfig, pop: _Population, day_index: int, day: date
) -> dict[str, pa.Table]:
    def rng(stream: _Stream) -> np.random.Generator:
        return _rng(config.seed, stream, day_index)

    drift = config.drifts_on(day)
    countries = _Countries.for_day(config.country_mix if drift else None)
    normal = _ordinary_payments(config, pop, day, rng, countries)
    fraud = _fraud_bursts(config, pop, rng(_Stream.FRAUD))
    rows = {k: np.concatenate([normal[k], fraud[k]]) for k in normal}
    n_normal = normal["card"].size
    is_fraud = np.concatenate([np.zeros(n_normal, bool), np.ones(fraud["card"].size, bool)])
    del normal, fraud

    rows["us"] = _coarsen(rng(_Stream.RESOLUTION), rows["us"])
    log_amount = rows.pop("log_amount")
    shift = config.amount_shift if drift else 1.0
    cents = np.maximum(np.rint(np.exp(log_amount) * (shift * 100)), _MIN_AMOUNT_CENTS)
    rows["cents"] = cents.astype(np.int64)

    rows, is_fraud = _split_payments(config, rng(_Stream.SPLITS), rows, is_fraud, n_normal)

    # Ties (same microsecond) keep generation order, so split halves stay side by side. The row
    # index in the low bits makes every key unique: any sort algorithm then gives one answer,
    # and sorting keys is several times faster than a stable argsort.
    keys = (rows["us"] << _ROW_BITS) | np.arange(is_fraud.size, dtype=np.int64)
    keys.sort()
    order = keys & ((1 << _ROW_BITS) - 1)
    del keys
    rows = {k: v[order] for k, v in rows.items()}
    is_fraud = is_fraud[order]
    n = is_fraud.size

    nulls = None
    if drift and config.null_burst_rate > 0.0:
        nulls = rng(_Stream.NULLS).random(n) < config.null_burst_rate

    day_start_us = (day - _EPOCH).days * _DAY_US
    event_us = rows["us"] + day_start_us
    label_rng = rng(_Stream.LABELS)
    is_fraud |= label_rng.random(n) < _BACKGROUND_FRAUD_RATE
    label_us = event_us + _label_delays(label_rng, is_fraud)

    transaction_id = _transaction_ids(day, n)
    card_id = pa.array(rows["card"] + 1, pa.int64())
    event_timestamp = pa.array(event_us, _TIMESTAMP)
    transactions = pa.Table.from_arrays([
        transaction_id,
        card_id,
        pa.array(rows["merchant"] + 1, pa.int64()),
        pa.array(rows["cents"] / 100.0, pa.float64()),
        _categorical(_CURRENCY_CODES, rows["currency"]),
        _categorical(_CATEGORY_NAMES, pop.merchant_category[rows["merchant"]], nulls),
        _categorical(countries.codes, rows["country"], nulls),
        _categorical(_CHANNEL_NAMES, rows["channel"]),
        event_timestamp,
    ], schema=SCHEMAS[TRANSACTIONS])
    labels = pa.Table.from_arrays([
        transaction_id,
        card_id,
        event_timestamp,
        pa.array(is_fraud, pa.bool_()),
        pa.array(label_us, _TIMESTAMP),
    ], schema=SCHEMAS[LABELS])
    return {
        TRANSACTIONS: transactions,
        LABELS: labels,
        CARD_PROFILES: _card_profiles(pop, day_index, day_start_us),
    }


@dataclass(frozen=True)
class _Countries:
    """One day's country dictionary, and how ordinary payments pick from it under drift."""

    codes: list[str]
    currency: np.ndarray
    mix: tuple[np.ndarray, _Choice] | None = None

    @classmethod
    def for_day(cls, country_mix: Mapping[str, float] | None) -> _Countries:
        if country_mix is None:
            return cls(list(_COUNTRY_CODES), _COUNTRY_CURRENCY)
        new = [c for c in country_mix if c not in _COUNTRY_CODES]
        codes = [*_COUNTRY_CODES, *new]
        currency = np.concatenate([_COUNTRY_CURRENCY, np.full(len(new), _FALLBACK_CURRENCY)])
        index = np.array([codes.index(c) for c in country_mix], dtype=np.int16)
        return cls(codes, currency, (index, _Choice(list(country_mix.values()))))


def _ordinary_payments(
    config: GeneratorConfig,
    pop: _Population,
    day: date,
    rng: Callable[[_Stream], np.random.Generator],
    countries: _Countries,
) -> dict[str, np.ndarray]:
    expected = pop.rate * _WEEKDAY_FACTOR[day.weekday()]
    card = np.repeat(np.arange(config.cards, dtype=np.int32),
                     rng(_Stream.VOLUME).poisson(expected))
    n = card.size
    home = pop.home[card]

    times = rng(_Stream.TIMES)
    local_hour = _HOUR_CHOICE.draw(times, n)
    # Wrapping keeps every event inside its UTC day, so partitions hold exactly their date.
    utc_hour = (local_hour - _UTC_OFFSET_H[home]) % 24
    us = utc_hour * _HOUR_US + times.integers(0, _HOUR_US, n)

    merchant = _draw(rng(_Stream.MERCHANTS), pop.merchant_cdf, n)
    category = pop.merchant_category[merchant]
    spread = config.amount_spread if config.drifts_on(day) else 1.0
    log_amount = (pop.log_scale[card] + _CATEGORY_LOG_MULT[category]
                  + rng(_Stream.AMOUNTS).normal(0.0, _AMOUNT_SIGMA * spread, n))

    places = rng(_Stream.PLACES)
    if countries.mix is None:
        abroad = places.random(n) < _ABROAD_RATE
        destination = _HOME_CHOICE.draw(places, n)
        country = np.where(abroad, destination, home)
    else:
        mix_index, mix_choice = countries.mix
        country = mix_index[mix_choice.draw(places, n)]
    in_home_currency = places.random(n) < _HOME_CURRENCY_RATE
    currency = np.where(in_home_currency, _COUNTRY_CURRENCY[home], countries.currency[country])

    channels = rng(_Stream.CHANNELS)
    channel = _CHANNEL_CHOICE.draw(channels, n)
    travel_online = channels.random(n) < _TRAVEL_ECOM_RATE
    channel = np.where(category == _CAT_DIGITAL, _CH_ECOM, channel)
    channel = np.where((category == _CAT_TRAVEL) & travel_online, _CH_ECOM, channel)
    channel = np.where(category == _CAT_CASH, _CH_ATM, channel)
    return {"card": card, "merchant": merchant, "us": us, "log_amount": log_amount,
            "country": country, "currency": currency, "channel": channel}


def _fraud_bursts(
    config: GeneratorConfig, pop: _Population, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    compromised = np.flatnonzero(rng.random(config.cards) < config.compromised_card_rate)
    length = np.minimum(_BURST_BASE_LEN + rng.poisson(_BURST_EXTRA_MEAN, compromised.size),
                        _BURST_MAX_LEN)
    card = np.repeat(compromised, length)
    n = card.size

    # A burst lasts at most _BURST_MAX_LEN gaps of 5 minutes, so starting an hour before
    # midnight keeps it inside the day.
    start = rng.integers(0, _DAY_US - _HOUR_US, compromised.size)
    gap = np.clip(rng.exponential(_BURST_GAP_MEAN_US, n), *_BURST_GAP_RANGE_US).astype(np.int64)
    first = np.repeat(np.cumsum(length) - length, length)
    elapsed = np.cumsum(gap)
    us = np.repeat(start, length) + elapsed - elapsed[first]

    merchant = pop.risky_merchants[rng.integers(0, pop.risky_merchants.size, n)]
    log_amount = (pop.log_scale[card] + _FRAUD_LOG_MULT
                  + rng.normal(0.0, _FRAUD_AMOUNT_SIGMA, n))
    # One foreign country per burst: where the stolen details are being used from.
    home = pop.home[compromised]
    country = _HOME_CHOICE.draw(rng, compromised.size)
    country = np.where(country == home, (country + 1) % len(_COUNTRY_CODES), country)
    country = np.repeat(country, length)
    return {"card": card, "merchant": merchant, "us": us, "log_amount": log_amount,
            "country": country, "currency": _COUNTRY_CURRENCY[country],
            "channel": np.full(n, _CH_ECOM)}


def _coarsen(rng: np.random.Generator, us: np.ndarray) -> np.ndarray:
    """Truncate timestamps to whole seconds or milliseconds, as many terminals report them."""
    draw = rng.random(us.size)
    to_second = draw < _SECOND_RESOLUTION_RATE
    to_milli = (~to_second) & (draw < _SECOND_RESOLUTION_RATE + _MILLI_RESOLUTION_RATE)
    us = np.where(to_second, us - us % _SECOND_US, us)
    return np.where(to_milli, us - us % 1000, us)


def _split_payments(
    config: GeneratorConfig,
    rng: np.random.Generator,
    rows: dict[str, np.ndarray],
    is_fraud: np.ndarray,
    n_normal: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Split some ordinary payments in two rows at the same microsecond, sharing the amount."""
    split = np.flatnonzero(rng.random(n_normal) < config.split_payment_rate)
    share = rng.uniform(*_SPLIT_SHARE_RANGE, split.size)
    total = rows["cents"][split]
    # _MIN_AMOUNT_CENTS × the smallest share keeps both halves at least a cent.
    first = np.floor(total * share).astype(np.int64)
    take = np.concatenate([np.arange(is_fraud.size), split])
    out = {k: v[take] for k, v in rows.items()}
    out["cents"][split] = first
    out["cents"][is_fraud.size:] = total - first
    return out, is_fraud[take]


def _label_delays(rng: np.random.Generator, is_fraud: np.ndarray) -> np.ndarray:
    median_h = np.where(is_fraud, _LABEL_MEDIAN_H_FRAUD, _LABEL_MEDIAN_H_LEGIT)
    hours = median_h * np.exp(rng.normal(0.0, _LABEL_DELAY_SIGMA, is_fraud.size))
    return np.clip(np.rint(hours * _HOUR_US), *_LABEL_DELAY_RANGE_US).astype(np.int64)


def _card_profiles(pop: _Population, day_index: int, day_start_us: int) -> pa.Table:
    # Reviews are counted from the start, so a day's limit needs no earlier day's state.
    reviews = (day_index + pop.review_phase) // pop.review_period
    tier = np.where((pop.tier == _TIER_STANDARD) & (reviews >= _UPGRADE_AFTER_REVIEWS),
                    _TIER_GOLD, pop.tier)
    limit = np.minimum(pop.base_limit * _LIMIT_REVIEW_FACTOR ** reviews, _TIER_LIMIT_CAP[tier])
    n = pop.rate.size
    return pa.Table.from_arrays([
        pa.array(np.arange(1, n + 1), pa.int64()),
        pa.array(np.full(n, day_start_us), _TIMESTAMP),
        pa.array(np.round(limit, -2), pa.float64()),
        pa.array(pop.age_at_start + day_index, pa.int64()),
        _categorical(_COUNTRY_CODES, pop.home),
        _categorical(_TIER_NAMES, tier),
    ], schema=SCHEMAS[CARD_PROFILES])


# ---------------------------------------------------------------------------------------------
# Arrow columns and files


def _categorical(
    names: list[str] | tuple[str, ...], index: np.ndarray, nulls: np.ndarray | None = None
) -> pa.Array:
    return pa.array(list(names), pa.string()).take(pa.array(index, mask=nulls))


_DIGIT_TRIPLETS = np.array([list(f"{i:03d}".encode()) for i in range(1000)], dtype=np.uint8)


def _transaction_ids(day: date, n: int) -> pa.Array:
    """'t' + YYYYMMDD + a 9-digit counter in time order: unique across days, sortable as text."""
    prefix = np.frombuffer(f"t{day:%Y%m%d}".encode(), dtype=np.uint8)
    width = prefix.size + 9
    text = np.empty((n, width), dtype=np.uint8)
    text[:, : prefix.size] = prefix
    counter = np.arange(n, dtype=np.int64)
    # Three digits per table lookup instead of one division per digit.
    for group, place in enumerate((1_000_000, 1_000, 1)):
        start = prefix.size + 3 * group
        text[:, start: start + 3] = _DIGIT_TRIPLETS[(counter // place) % 1000]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def _check_date(name: str, value: object) -> None:
    # A datetime is a date too, but its time of day would be silently ignored.
    if not isinstance(value, date) or isinstance(value, datetime):
        # One exception type for every config error keeps callers' handling simple.
        raise ValueError(f"{name} must be a datetime.date, got {value!r}")  # noqa: TRY004


def _check_real(name: str, value: object, *, low: float, high: float | None = None,
                low_open: bool = False) -> None:
    # float() of a Real is exact for the ints and floats a config holds, and comparable to bounds.
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(number := float(value))
          and (number > low if low_open else number >= low)
          and (high is None or number <= high))
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _checked_country_mix(mix: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(mix, Mapping) or not mix:
        raise ValueError(f"country_mix must be a non-empty mapping of country -> weight, got {mix!r}")
    for country, weight in mix.items():
        if not isinstance(country, str) or not country:
            raise ValueError(f"country_mix keys must be non-empty strings, got {country!r}")
        _check_real(f"country_mix[{country!r}]", weight, low=0.0)
    if sum(mix.values()) <= 0:
        raise ValueError("country_mix weights must not all be zero")
    # A private copy: the caller's dict may change later; a plain dict keeps the config picklable.
    return dict(mix)
