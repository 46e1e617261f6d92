"""Tables the CLI prints, described once and rendered three ways: a table, JSON or CSV.

A command builds a ``TableData`` (title, columns, rows of raw values) and calls ``emit``
with the user's ``--format``. ``table`` on a terminal is a rich table whose numeric
columns are never squeezed (each is at least as wide as its widest number) and whose
text columns fold rather than end in "…"; when stdout is not a terminal (``| cat``, a
file, a test) it is plain aligned text at its natural width, so nothing is ever cut.
``json`` and ``csv`` carry the raw values at full precision. Numbers in the table keep
their significant digits: a delta of 1e-05 prints as ``1e-05``, never ``0.0000``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table


class OutputFormat(StrEnum):
    """The ``--format`` choices."""

    table = "table"
    json = "json"
    csv = "csv"


FORMAT_HELP = "table (aligned text; plain when piped, never truncated), json or csv (raw values, full precision)."


@dataclass(frozen=True)
class Column:
    """One column: its header, whether it holds numbers, and its decimals in the table view."""

    name: str
    numeric: bool = False
    digits: int = 4


@dataclass
class TableData:
    """A title, columns and rows of raw values (numbers stay numbers until rendered)."""

    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    styles: list[str | None] = field(default_factory=list)

    def add_row(self, *values: Any, style: str | None = None) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"table {self.title!r}: row has {len(values)} values for {len(self.columns)} columns")
        self.rows.append(list(values))
        self.styles.append(style)

    def cells(self) -> list[list[str]]:
        """Every row as the strings the table view shows."""
        return [[format_value(value, column) for value, column in zip(row, self.columns)] for row in self.rows]

    def records(self) -> list[dict[str, Any]]:
        """Every row as ``{column: raw value}`` (for JSON)."""
        return [{column.name: _plain(value) for column, value in zip(self.columns, row)} for row in self.rows]


def format_value(value: Any, column: Column | None = None) -> str:
    """A cell as text: ``-`` for None; floats with ``digits`` decimals unless that would hide them."""
    digits = column.digits if column is not None else 4
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return format_number(value, digits)


def format_number(value: float, digits: int = 4) -> str:
    """``digits`` decimals, or significant digits when the value is too small or too large for them.

    0.1234567 -> 0.1235; 1e-05 -> 1e-05 (not 0.0000); 123456789.0 -> 1.235e+08; 0 -> 0.0000.
    """
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return f"{0:.{digits}f}"
    magnitude = abs(value)
    if magnitude < 10 ** -(digits - 1) or magnitude >= 1e7:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def emit(data: TableData, fmt: OutputFormat | str = OutputFormat.table, console: Console | None = None) -> None:
    """Print ``data`` in ``fmt`` on ``console`` (default: stdout)."""
    console = console or Console()
    fmt = OutputFormat(fmt)
    if fmt is OutputFormat.json:
        console.out(to_json(data), highlight=False)
    elif fmt is OutputFormat.csv:
        console.out(to_csv(data), end="", highlight=False)
    elif console.is_terminal:
        for part in column_groups(data, console.width):
            console.print(rich_table(part))
    else:
        console.out(plain_text(data), highlight=False)


def to_json(data: TableData) -> str:
    return json.dumps({"title": data.title, "rows": data.records()}, indent=2)


def to_csv(data: TableData) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column.name for column in data.columns])
    for row in data.rows:
        writer.writerow(["" if value is None else _plain(value) for value in row])
    return buffer.getvalue()


def plain_text(data: TableData) -> str:
    """The table as aligned text at its natural width (numbers right-aligned, two spaces between)."""
    cells = data.cells()
    headers = [column.name for column in data.columns]
    widths = [max([len(header), *(len(row[at]) for row in cells)]) for at, header in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [value.rjust(width) if column.numeric else value.ljust(width)
                 for value, width, column in zip(values, widths, data.columns)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([data.title, line(headers), rule, *(line(row) for row in cells)])


FOLDED_TEXT_WIDTH = 24
"""Room planned for a text column that is not the first: longer text folds onto more lines."""


def column_groups(data: TableData, width: int) -> list[TableData]:
    """``data`` split into tables that each fit ``width``, every one repeating the first column.

    Numbers are never narrowed, so a table too wide for the terminal is shown as several
    narrower ones (the later ones titled "(continued)") rather than cut.
    """
    cells = data.cells()

    def room(at: int) -> int:
        natural = max([len(word) for word in data.columns[at].name.split()] + [len(row[at]) for row in cells] + [1])
        if at and not data.columns[at].numeric:
            natural = min(natural, FOLDED_TEXT_WIDTH)
        return natural + 3  # padding and border

    groups: list[list[int]] = [[]]
    used = room(0) + 1
    for at in range(1, len(data.columns)):
        if groups[-1] and used + room(at) > width:
            groups.append([])
            used = room(0) + 1
        groups[-1].append(at)
        used += room(at)
    if len(groups) == 1:
        return [data]
    parts = []
    for number, group in enumerate(groups):
        keep = [0, *group]
        part = TableData(data.title if number == 0 else f"{data.title} (continued)", [data.columns[at] for at in keep])
        for row, style in zip(data.rows, data.styles):
            part.add_row(*(row[at] for at in keep), style=style)
        parts.append(part)
    return parts


def rich_table(data: TableData) -> Table:
    """A rich table that folds text columns and never narrows a number below its full width."""
    cells = data.cells()
    table = Table(title=data.title)
    for at, column in enumerate(data.columns):
        if column.numeric:
            widest = max([len(column.name.split()[0]) if column.name else 1, *(len(row[at]) for row in cells)])
            table.add_column(column.name, justify="right", no_wrap=True, min_width=widest, overflow="fold")
        else:
            table.add_column(column.name, overflow="fold")
    for row, style in zip(cells, data.styles):
        table.add_row(*row, style=style)
    return table


def _plain(value: Any) -> Any:
    """A JSON/CSV-safe raw value (NaN and infinities as strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
