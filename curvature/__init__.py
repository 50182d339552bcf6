"""Curvature of losses and kernels of models: pure math on ``(loss_fn, params)`` and
``(apply_fn, params, x)``. Knows no files and no trainer.

Hessian: Hessian-vector products, Lanczos top-k, SLQ spectral density, exact dense spectra,
warm-started per-step tracking, gradient projection, landscape sections.
NTK: the empirical kernel (Jacobian contraction or NTK-vector products, optional
neural-tangents backend), its spectrum, matrix-free top-k, stability factors, the loss-weighted
kernel of the residual dynamics, and per-step tracking.
"""

from curvature._density import Density, broaden, spectral_density
from curvature._hessian import (
    Eigen,
    FlatOperator,
    hessian_eigh,
    hessian_exact,
    hessian_operator,
    hvp,
    unravel_eigenvectors,
)
from curvature._lanczos import Krylov, hessian_top_k, lanczos
from curvature._norm import tree_norm
from curvature._ntk import (
    AUTO_JACOBIAN_MAX_BYTES,
    IMPLEMENTATIONS,
    empirical_ntk,
    ntk_matrix,
    ntk_operator,
    resolve_implementation,
)
from curvature._ntk_loss import loss_ntk, output_hessian
from curvature._ntk_spectrum import (
    REGIME_NAMES,
    TOP_K_METHODS,
    NTKEigen,
    NTKSpectrum,
    StabilityFactors,
    ntk_spectrum,
    ntk_top_k,
    stability_factors,
    top_k_eigh,
)
from curvature._ntk_tracking import NTKTrack, NTKTracker, NTKTrackerState, ntk_tracker
from curvature._projection import GradientProjection, gradient_projection
from curvature._section import Section, landscape_section
from curvature._tracking import Tracker, TrackerState, hessian_tracker

__all__ = [
    "AUTO_JACOBIAN_MAX_BYTES",
    "IMPLEMENTATIONS",
    "REGIME_NAMES",
    "TOP_K_METHODS",
    "Density",
    "Eigen",
    "FlatOperator",
    "GradientProjection",
    "Krylov",
    "NTKEigen",
    "NTKSpectrum",
    "NTKTrack",
    "NTKTracker",
    "NTKTrackerState",
    "Section",
    "StabilityFactors",
    "Tracker",
    "TrackerState",
    "broaden",
    "empirical_ntk",
    "gradient_projection",
    "hessian_eigh",
    "hessian_exact",
    "hessian_operator",
    "hessian_top_k",
    "hessian_tracker",
    "hvp",
    "lanczos",
    "landscape_section",
    "loss_ntk",
    "ntk_matrix",
    "ntk_operator",
    "ntk_spectrum",
    "ntk_top_k",
    "ntk_tracker",
    "output_hessian",
    "resolve_implementation",
    "spectral_density",
    "stability_factors",
    "top_k_eigh",
    "tree_norm",
    "unravel_eigenvectors",
]
