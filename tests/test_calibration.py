"""Temperature scaling: it fixes an under-confident model's probabilities and never changes a label."""

import numpy as np

from quorum.calibration import calibrate, expected_calibration_error, fit_temperature


def under_confident(n=4000, classes=5, seed=0):
    """A model whose true class is drawn from softmax(logits) but which reports softmax(0.4 * logits):
    right about 80% of the time yet reading ~0.45, the shape label smoothing gives."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 2.0
    logits[np.arange(n), rng.integers(classes, size=n)] += 4.0
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    soft = np.exp(0.4 * logits) / np.exp(0.4 * logits).sum(axis=1, keepdims=True)
    return soft.astype(np.float32), labels


def test_temperature_cuts_ece_and_keeps_every_label():
    probs, labels = under_confident()
    before = expected_calibration_error(probs, labels)
    temperature = fit_temperature(probs, labels)
    calibrated = calibrate(probs, temperature)
    assert temperature < 1  # under-confident: sharpen
    assert before > 0.15 and expected_calibration_error(calibrated, labels) < 0.03
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(calibrated.sum(axis=1), 1, atol=1e-5)


def test_calibrated_model_keeps_temperature_near_one():
    probs, labels = under_confident(seed=1)
    calibrated = calibrate(probs, fit_temperature(probs, labels))
    assert abs(fit_temperature(calibrated, labels) - 1) < 0.02


def test_zero_probabilities_stay_finite():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    out = calibrate(probs, 2.0)
    assert np.isfinite(out).all() and (out.argmax(axis=1) == [0, 1]).all()
