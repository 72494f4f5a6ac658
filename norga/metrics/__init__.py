"""Accuracy matrix -> FA, CA, FFM."""

from norga.metrics.accuracy import (
    AccMatrix,
    average_accuracy_curve,
    cumulative_average_accuracy,
    final_average_accuracy,
    forgetting,
    summarize,
)

__all__ = [
    "AccMatrix",
    "average_accuracy_curve",
    "cumulative_average_accuracy",
    "final_average_accuracy",
    "forgetting",
    "summarize",
]
