"""Where the API and the stream worker offer a sample of the rows they serve and write, for drift
monitoring. The product only knows this shape; the monitors plugin provides the sink (the capture
log, a Kafka topic), see `featurestore.plugins.capture_sink`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

SCORE_COLUMN = "score"  # the model's fraud score, captured by `POST /v1/score`


class CaptureSink(Protocol):
    """Offers never block and never raise: a sample is never worth a failed request or write."""

    def sample(self, count: int) -> Sequence[int] | None:
        """Indexes of the rows to keep of `count`; None when none is kept."""
        ...

    def offer_columns(
        self,
        subject: str,
        columns: Sequence[str],
        values: Sequence[Sequence[Any]],
        event_times: Mapping[str, Sequence[Any]] | None = None,
        *,
        picks: Sequence[int] | None = None,
    ) -> None:
        """Column-major rows (`values[column][row]`); `event_times`: per feature view, each
        row's event time; `picks`: rows already drawn with `sample`."""
        ...

    def offer_table(
        self,
        subject: str,
        table: pa.Table,
        columns: Sequence[str],
        event_time_columns: Mapping[str, str] | None = None,
    ) -> None:
        """The rows of an Arrow table (`columns` of it); `event_time_columns`: per view, the
        table's event-time column."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Send what waits (for up to `timeout`), then stop."""
        ...
