"""Probabilities that mean what they say: one temperature per model, fitted on validation (Guo et al. 2017),
and the expected calibration error (ECE) that tells how far a model is from that.

Label smoothing and a short fine-tune leave members under-confident (right answers read 0.3-0.6), so a
`confidence` column would not be a probability. Dividing the log-probabilities by a temperature T and
taking the softmax again fixes the scale without changing any row's top label (T > 0 keeps the order).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15  # as Guo et al. and torchmetrics' examples
TINY = 1e-12  # a stored probability of 0 (rounded, or float32 underflow) still has a finite log
T_RANGE = (0.05, 20.0)  # far beyond any temperature a fine-tuned model needs; keeps the search bounded


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / temperature) over the last axis; the argmax of every row is unchanged."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), TINY, 1.0)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=-1, keepdims=True)).astype(np.asarray(probs).dtype, copy=False)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` under `probs` (images, classes)."""
    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), TINY, 1.0))
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        z = log_probs / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        return float(-(z[rows, labels] - np.log(np.exp(z).sum(axis=1))).mean())

    # NLL is smooth and unimodal in log T: a bounded scalar search is exact enough and never diverges.
    result = minimize_scalar(nll, bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins (torchmetrics' definition, L1): 0 is perfectly calibrated."""
    import torch  # here, not above: the vote calibrates with this module, and a CLI mistake must not load torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    if len(probs) == 0:
        return float("nan")
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return float(multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=bins, norm="l1"))


def confidence_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of one confidence per row against whether that row's label was right: the vote's `confidence`
    (mean probability of the voted label, which need not be the top of the mean) is scored this way."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    confidence = torch.as_tensor(np.asarray(confidence, dtype=np.float32))
    if len(confidence) == 0:
        return float("nan")
    correct = torch.as_tensor(np.asarray(correct, dtype=np.int64))
    return float(binary_calibration_error(confidence, correct, n_bins=bins, norm="l1"))


def fit_calibration(probs: np.ndarray, labels: np.ndarray) -> dict:
    """model.json's "calibration" block: the temperature fitted on these validation predictions and the
    ECE before and after it. Rounded as stored, so the ECE after is that of the stored temperature."""
    temperature = round(fit_temperature(probs, labels), 6)
    return {"temperature": temperature,
            "ece_before": round(expected_calibration_error(probs, labels), 6),
            "ece_after": round(expected_calibration_error(calibrate(probs, temperature), labels), 6),
            "fitted_on": "validation", "images": len(labels)}
