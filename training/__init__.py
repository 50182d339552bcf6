"""Datasets, models, the run configuration, the trainer and run files."""

import os

# Run files are written incrementally while other processes (``dynloss info``, a notebook) read
# them; HDF5's advisory file locks would make those readers fail until the run ends.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


from training._batched import BATCHED_FIELDS, BatchResult, shape_key, train_batch
from training._config import DATASETS, DTYPES, MODELS, OPTIMIZERS, TrainConfig
from training._data import Data, spiral
from training._diagnostics import hessian_metric, ntk_metric
from training._metrics import Context, Metric, stateless
from training._models import Model, Params, mlp
from training._runfile import (
    STEP_VARIABLES,
    check_sibling,
    open_run,
    sibling_files,
    sibling_path,
    write_sibling,
)
from training._trainer import (
    Problem,
    Restored,
    build,
    config_of,
    context,
    initial_state,
    load_data,
    make_step,
    precision,
    restore,
    train,
    unflatten,
)

__all__ = [
    "BATCHED_FIELDS",
    "DATASETS",
    "DTYPES",
    "MODELS",
    "OPTIMIZERS",
    "STEP_VARIABLES",
    "BatchResult",
    "Context",
    "Data",
    "Metric",
    "Model",
    "Params",
    "Problem",
    "Restored",
    "TrainConfig",
    "build",
    "check_sibling",
    "config_of",
    "context",
    "hessian_metric",
    "initial_state",
    "load_data",
    "make_step",
    "mlp",
    "ntk_metric",
    "open_run",
    "precision",
    "restore",
    "shape_key",
    "sibling_files",
    "sibling_path",
    "spiral",
    "stateless",
    "train",
    "train_batch",
    "unflatten",
    "write_sibling",
]
