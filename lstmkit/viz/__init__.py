"""Plots and reports. matplotlib is imported lazily, inside each function, so that the
core never needs it.

* :mod:`lstmkit.viz.curves`: training and learning curves, gradient flow;
* :mod:`lstmkit.viz.gates`: gate heatmaps and saturation plots (PNG);
* :mod:`lstmkit.viz.report`: the JSON report and its self-contained HTML page;
* :mod:`lstmkit.viz.runs`: the PNGs of training runs, drawn from the trainers' hooks;
* :mod:`lstmkit.viz.tour`: the pages of ``lstmkit tour`` (:mod:`lstmkit.tour`).
"""

from .curves import plot_gradient_flow, plot_learning_curves, plot_loss_curve
from .gates import plot_gate_heatmaps, plot_saturation, plot_unit_over_text
from .report import language_model_report, render_html, sequence_report, write_html, write_json

__all__ = ["plot_loss_curve", "plot_learning_curves", "plot_gradient_flow",
           "plot_gate_heatmaps", "plot_saturation", "plot_unit_over_text",
           "language_model_report",
           "sequence_report", "render_html", "write_html", "write_json"]
