"""Everything on run files: post-hoc curvature, user diagnostics, onset detection, threshold
scaling, figures, and the ``dynloss`` command line."""

from analysis._map import DiagnosticError, map_checkpoints
from analysis._onsets import METHODS, branch_labels, detect_onsets
from analysis._phase import phase_diagram, plot_phase_diagram, plot_width
from analysis._plots import (
    plot_gradient_projection,
    plot_landscape_section,
    plot_run,
    plot_spectral_density,
    plot_threshold_scaling,
)
from analysis._scaling import (
    ScalingFit,
    ThresholdPoints,
    collect_thresholds,
    fit_threshold_scaling,
    fit_threshold_scaling_runs,
    stability_limit,
)
from analysis._sweep import expand, sweep
from analysis._threshold import Threshold, threshold
from analysis._trajectories import checkpoint_section, hessian_trajectory, ntk_trajectory

__all__ = [
    "METHODS",
    "DiagnosticError",
    "ScalingFit",
    "Threshold",
    "ThresholdPoints",
    "branch_labels",
    "checkpoint_section",
    "collect_thresholds",
    "detect_onsets",
    "expand",
    "fit_threshold_scaling",
    "fit_threshold_scaling_runs",
    "hessian_trajectory",
    "map_checkpoints",
    "ntk_trajectory",
    "phase_diagram",
    "plot_gradient_projection",
    "plot_landscape_section",
    "plot_phase_diagram",
    "plot_run",
    "plot_spectral_density",
    "plot_threshold_scaling",
    "plot_width",
    "stability_limit",
    "sweep",
    "threshold",
]
