"""Plots and reports. matplotlib is imported lazily, inside each function, so that the
core never needs it."""

from .curves import plot_gradient_flow, plot_learning_curves, plot_loss_curve

__all__ = ["plot_loss_curve", "plot_learning_curves", "plot_gradient_flow"]
