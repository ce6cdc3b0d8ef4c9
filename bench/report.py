"""The results table every benchmark prints (its JSON format is in bench/README.md)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if unit == "rows/s" else f"{value:,.1f} {unit}"


def print_cases(
    console: Console, title: str, cases: list[dict], verdicts: list[bool | None]
) -> None:
    """One row per case: ours, the anchor, the ratio, the target and whether it was met."""
    table = Table(title=title)
    for column in ("case", "metric", "ours", "anchor", "ratio", "target", ""):
        table.add_column(
            column, justify="left" if column in ("case", "metric", "target") else "right"
        )
    for case, verdict in zip(cases, verdicts):
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}[verdict]
        table.add_row(
            case["case"],
            case["metric"],
            _number(case["ours"], case["unit"]),
            _number(case["anchor"], case["unit"]),
            "-" if case["ratio"] is None else f"{case['ratio']:.2f}x",
            case["target"],
            mark,
        )
    console.print(table)
