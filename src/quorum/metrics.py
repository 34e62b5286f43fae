"""Classification scores, computed the same way for a single model and for the ensemble."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(y_true, y_pred, classes) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix
    (rows: true class, columns: predicted), as plain types for JSON."""
    labels = np.arange(len(classes))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # scikit-learn's balanced_accuracy_score, the mean recall of the classes that occur, without the warnings it
        # prints mid-run when validation holds one class or a prediction of a class it lacks.
        "balanced_accuracy": float(recall[support > 0].mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "images": int(len(y_true)),
    }
