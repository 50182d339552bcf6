"""The one progress bar of the command line and the long-running analyses (rich)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def start_bar(
    label: str, total: int, *, detail: str = "", **fields: object
) -> tuple[Progress, TaskID]:
    """Start a bar ``label ━━━ done/total detail elapsed remaining``; returns (bar, task).

    ``detail`` is a rich format string that may use ``{task.fields[...]}`` given as ``fields``.
    Stop it with ``bar.stop()``.
    """
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if detail:
        columns.append(TextColumn(detail))
    bar = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn())
    task = bar.add_task(label, total=total, **fields)
    bar.start()
    return bar, task
