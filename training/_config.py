"""``TrainConfig``: the frozen, serialisable description of one training run."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from curvature._checks import integer_at_least, is_integer
from schedules import LOSSES, SHAPES
from training._models import INITS, PARAMETERIZATIONS

DATASETS = ("spiral",)
MODELS = ("mlp",)
OPTIMIZERS = ("gd", "momentum", "nesterov")
DTYPES = ("float32", "float64")
FLOAT_FIELDS = (
    "noise",
    "w_std",
    "b_std",
    "amplitude",
    "period",
    "learning_rate",
    "momentum",
    "hessian_tol",
)
INTEGER_FIELDS = (
    "points_per_class",
    "num_classes",
    "data_seed",
    "stop_after",
    "steps",
    "batch_size",
    "seed",
    "checkpoint_every",
    "eval_every",
    "chunk_steps",
    "track_every",
    "hessian_top_k",
    "ntk_top_k",
)
OPTIONAL_FIELDS = ("b_std", "hessian_tol", "stop_after", "batch_size")
"""Number fields: any real (integer) number is accepted, NumPy scalars included, and stored as
a Python float (int) so the config serialises to JSON and TOML. Optional ones may be None."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. ``TrainConfig()`` is the 2021 spiral run (DCE, A=10, T=200,
    η=1, 35,000 steps), except that Γ oscillates to the last step (``stop_after=None``): the
    paper's last period without oscillation is ``stop_after=steps - period`` (``stop_last_period``
    in sweeps; the demo and ``examples/lr_study.py`` set it).

    Data: ``dataset`` ("spiral"), ``points_per_class``, ``num_classes``, ``noise``, ``data_seed``
    (the dataset is fixed across ``seed`` values unless ``data_seed`` changes).
    Model: ``model`` ("mlp"), ``hidden_widths``, ``parameterization`` ("standard" | "ntk"),
    ``init`` ("lecun" | "glorot"), ``w_std``, ``b_std`` (None: the default of the init, see
    ``training.mlp``).
    Loss and schedule: ``loss`` ("ce" | "mse" | "dce" | "dmse1" | "dmse2"), ``schedule``
    ("triangle" | "constant" | "sine" | "square"), ``amplitude`` A >= 1, ``period`` T > 0 steps,
    ``stop_after`` (Γ ≡ 1 from this step on; None: never). The static losses "ce" and "mse" use
    Γ ≡ 1 whatever the schedule fields say, and the run file records the Γ actually applied.
    Optimiser: ``optimizer`` ("gd" = ``optax.sgd``, "momentum" = heavy ball, "nesterov"),
    ``learning_rate`` > 0, ``momentum`` in [0, 1) (ignored by "gd").
    Loop: ``steps``, ``batch_size`` (None = full batch; otherwise a fresh random minibatch
    without replacement each step), ``seed`` (initialisation and minibatch key), ``dtype``,
    ``checkpoint_every`` (steps between saved parameters), ``eval_every`` (steps between
    validation evaluations), ``chunk_steps`` (steps per compiled ``lax.scan`` chunk, i.e. per
    write to the run file), ``output`` (netCDF path or None).
    Tracking (every ``track_every`` steps): ``hessian_top_k`` (0 = off) warm-started Hessian
    eigenpairs, ``projection`` (the gradient along them), ``hessian_tol`` (the tracker's
    relative-residual tolerance; None: 1.2e-3 in float32, 1e-4 in float64; larger is faster,
    eigenvalues come to about tol² |λ| / gap), ``ntk_top_k`` (0 = off).
    """

    dataset: str = "spiral"
    points_per_class: int = 100
    num_classes: int = 3
    noise: float = 0.2
    data_seed: int = 0
    model: str = "mlp"
    hidden_widths: tuple[int, ...] = (100,)
    parameterization: str = "standard"
    init: str = "lecun"
    w_std: float = 1.0
    b_std: float | None = None
    loss: str = "dce"
    schedule: str = "triangle"
    amplitude: float = 10.0
    period: float = 200.0
    stop_after: int | None = None
    optimizer: str = "gd"
    learning_rate: float = 1.0
    momentum: float = 0.9
    steps: int = 35000
    batch_size: int | None = None
    seed: int = 0
    dtype: str = "float32"
    checkpoint_every: int = 1000
    eval_every: int = 100
    chunk_steps: int = 1000
    output: str | None = None
    track_every: int = 1
    hessian_top_k: int = 0
    projection: bool = False
    hessian_tol: float | None = None
    ntk_top_k: int = 0

    def __post_init__(self) -> None:
        widths = self.hidden_widths
        if is_integer(widths):
            widths = (widths,)
        try:
            widths = tuple(widths)
        except TypeError:
            raise ValueError(
                f"hidden_widths must be a non-empty list of integers >= 1 (got {widths!r})."
            ) from None
        # NumPy integers (a sweep's grid values) become Python ints, so the config serialises.
        widths = tuple(int(w) if is_integer(w) else w for w in widths)
        object.__setattr__(self, "hidden_widths", widths)
        if self.output is not None:
            object.__setattr__(self, "output", str(self.output))
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            optional = name in OPTIONAL_FIELDS
            if optional and value is None:
                continue
            if not _is_real(value):
                suffix = " or None" if optional else ""
                raise ValueError(f"{name} must be a number{suffix} (got {value!r}).")
            object.__setattr__(self, name, float(value))
        for name in INTEGER_FIELDS:
            value = getattr(self, name)
            if is_integer(value):
                object.__setattr__(self, name, int(value))
        if isinstance(self.projection, np.bool_):
            object.__setattr__(self, "projection", bool(self.projection))
        _validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["hidden_widths"] = list(self.hidden_widths)
        return out

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error naming them and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s) {unknown}; known fields are {sorted(known)}."
            )
        return cls(**fields)  # hidden_widths: a list or a single integer, as in __init__

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def to_toml(self) -> str:
        """TOML text of the fields; fields that are None (TOML has no null) are left out."""
        return tomli_w.dumps({k: v for k, v in self.to_dict().items() if v is not None})

    @classmethod
    def from_toml(cls, source: str | Path) -> TrainConfig:
        """Read a TOML file or TOML text; missing fields take their defaults.

        A ``pathlib.Path``, or a string naming an existing file, is read as a file (so
        ``runs/lr=0.5.toml`` is a path); any other string is parsed as TOML text.
        """
        if isinstance(source, Path) or _is_file(source):
            return cls.from_dict(tomllib.loads(Path(source).read_text()))
        text = str(source)
        try:
            fields = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            if "\n" not in text.strip():  # one line that is not TOML: meant as a file name
                raise FileNotFoundError(
                    f"TOML config file {text!r} does not exist (nor is it TOML text: {error})."
                ) from None
            raise ValueError(f"the TOML config text is not valid TOML: {error}.") from error
        return cls.from_dict(fields)


def _is_file(source: str) -> bool:
    try:
        return Path(source).is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL character: text
        return False


def _is_real(value: Any) -> bool:
    """A real number: Python's, NumPy's or a 0-d real array (a JAX scalar), not a bool."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Real):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        dtype is not None
        and np.ndim(value) == 0
        and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
    )


def _choice(config: TrainConfig, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed} (got {value!r}).")


def _integer(config: TrainConfig, name: str, minimum: int, *, optional: bool = False) -> None:
    integer_at_least(name, getattr(config, name), minimum, optional=optional)


MAX_STEPS = 2**31 - 1
MAX_SEED = 2**63 - 1


def _at_most(config: TrainConfig, name: str, maximum: int, reason: str) -> None:
    value = getattr(config, name)
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum} ({reason}) (got {value}).")


def _validate(c: TrainConfig) -> None:
    _choice(c, "dataset", DATASETS)
    _choice(c, "model", MODELS)
    _choice(c, "loss", LOSSES)
    _choice(c, "schedule", SHAPES)
    _choice(c, "optimizer", OPTIMIZERS)
    _choice(c, "dtype", DTYPES)
    _choice(c, "parameterization", PARAMETERIZATIONS)
    _choice(c, "init", INITS)
    _integer(c, "points_per_class", 1)
    _integer(c, "num_classes", 2)
    _integer(c, "data_seed", 0)
    _integer(c, "steps", 1)
    _integer(c, "seed", 0)
    _at_most(c, "steps", MAX_STEPS, "the step counter is a 32-bit integer")
    _at_most(c, "seed", MAX_SEED, "JAX's random keys take 64-bit seeds")
    _integer(c, "checkpoint_every", 1)
    _integer(c, "eval_every", 1)
    _integer(c, "chunk_steps", 1)
    _integer(c, "track_every", 1)
    _integer(c, "hessian_top_k", 0)
    _integer(c, "ntk_top_k", 0)
    if not isinstance(c.projection, bool):
        raise ValueError(f"projection must be True or False (got {c.projection!r}).")
    if c.projection and c.hessian_top_k < 1:
        raise ValueError(
            "projection=True needs hessian_top_k >= 1: the gradient is projected on the "
            "tracked Hessian eigenvectors."
        )
    if c.hessian_tol is not None:
        if not 0 < c.hessian_tol < 1:
            raise ValueError(
                f"hessian_tol must be in (0, 1) or None for the tracker's default (got "
                f"{c.hessian_tol!r})."
            )
        if c.hessian_top_k < 1:
            raise ValueError(
                "hessian_tol needs hessian_top_k >= 1: it is the tolerance of the online "
                "Hessian tracker."
            )
    if c.ntk_top_k and 5 * c.ntk_top_k >= c.points_per_class * c.num_classes**2:
        raise ValueError(
            f"ntk_top_k must be < N·C/5 = {c.points_per_class * c.num_classes**2 / 5:g} for "
            f"the warm-started LOBPCG tracker (got {c.ntk_top_k})."
        )
    _integer(c, "batch_size", 1, optional=True)
    _integer(c, "stop_after", 0, optional=True)
    if not c.hidden_widths or any(not is_integer(w) or w < 1 for w in c.hidden_widths):
        raise ValueError(
            f"hidden_widths must be a non-empty list of integers >= 1 (got {c.hidden_widths!r})."
        )
    if not (math.isfinite(c.amplitude) and c.amplitude >= 1):
        raise ValueError(
            f"amplitude must be >= 1 (got {c.amplitude!r}); amplitude 1 is the static loss."
        )
    if not (math.isfinite(c.period) and c.period > 0):
        raise ValueError(f"period must be > 0 steps (got {c.period!r}).")
    if not (math.isfinite(c.learning_rate) and c.learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0 (got {c.learning_rate!r}).")
    if not 0 <= c.momentum < 1:
        raise ValueError(f"momentum must be in [0, 1) (got {c.momentum!r}).")
    if not (math.isfinite(c.noise) and c.noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0 (got {c.noise!r}).")
    if not (math.isfinite(c.w_std) and c.w_std > 0):
        raise ValueError(f"w_std must be a finite number > 0 (got {c.w_std!r}).")
    if c.b_std is not None and not (math.isfinite(c.b_std) and c.b_std >= 0):
        raise ValueError(f"b_std must be a finite number >= 0 or None (got {c.b_std!r}).")
    if c.dtype == "float32":  # a value float32 rounds to inf or 0 would read as divergence
        tiny, huge = float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).max)
        for name in FLOAT_FIELDS:
            value = getattr(c, name)
            if value is not None and value != 0 and not tiny <= abs(value) <= huge:
                raise ValueError(
                    f"{name} = {value!r} is outside float32's range (its magnitude must lie "
                    f"within [{tiny:.3g}, {huge:.3g}]); use "
                    "dtype='float64' for it."
                )
    num_train = c.points_per_class * c.num_classes
    if c.batch_size is not None and c.batch_size > num_train:
        raise ValueError(
            f"batch_size must be <= the {num_train} training samples, or None for full batch "
            f"(got {c.batch_size})."
        )
