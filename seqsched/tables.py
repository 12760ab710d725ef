"""Results as a printed table (markdown pipe syntax, so it pastes into READMEs)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def format_value(value: Any) -> str:
    """A compact rendering of a table cell."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1000 or abs(value) < 0.01):
            return f"{value:.3g}"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"
    return "-" if value is None else str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table (markdown pipe syntax, so it pastes into READMEs)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[format_value(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = "| " + " | ".join(column.ljust(widths[i]) for i, column in enumerate(columns)) + " |"
    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    body = ["| " + " | ".join(line[i].ljust(widths[i]) for i in range(len(columns))) + " |" for line in cells]
    return "\n".join([header, rule, *body])
