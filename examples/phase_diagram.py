"""The README's phase-diagram example: seed-mean final validation accuracy over (A, T).

    .venv/bin/python examples/phase_diagram.py [SWEEP.nc] [FIGURE.png]

Reads the shipped reduced sweep ``data/sweep_laptop.nc`` (made by
``dynloss sweep examples/sweep_laptop.toml --output data/sweep_laptop.nc --quiet``), prints the
table of mean ± standard error and writes the figure. ``tests/test_sweep.py`` runs
:func:`phase_table` on the shipped file and compares it with ``data/sweep_laptop_phase.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import xarray as xr

from analysis._phase import format_phase_table, phase_diagram, plot_phase_diagram

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "sweep_laptop.nc"


def phase_table(path: str | Path = SHIPPED) -> xr.DataArray:
    """The phase diagram (stat, amplitude, period) of the final validation accuracy."""
    with xr.open_dataset(path) as sweep:
        return phase_diagram(sweep.load(), metric="val_accuracy", x="period", y="amplitude")


def main(argv: list[str]) -> None:
    path = argv[0] if argv else SHIPPED
    figure = argv[1] if len(argv) > 1 else "phase_diagram.png"
    phase = phase_table(path)
    print(format_phase_table(phase))
    plot_phase_diagram(phase).savefig(figure, dpi=120)
    print(f"wrote {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
