"""Plain-text tables for terminals: left-aligned columns, two spaces apart.

Used by the benchmarks' reports and by `memora cluster status`. What must not live here: what a
table says (each caller builds its own rows).
"""

from __future__ import annotations

from collections.abc import Sequence


def aligned_lines(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, rule: bool = False
) -> list[str]:
    """The headers and rows as lines of padded cells (no trailing spaces); with `rule`, a line of
    dashes under the headers."""
    table = [headers, *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(headers))]
    if rule:
        table.insert(1, ["-" * width for width in widths])
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
