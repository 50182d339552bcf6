"""Imported first by every benchmark script, before the packages it measures.

Python puts a script's own folder first on the import path, so ``benchmarks/curvature.py`` (the
name issue 4 gave the curvature benchmark) would shadow the ``curvature`` package for every
script in this folder. This drops the folder from the path again.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
