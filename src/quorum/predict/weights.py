"""Member weights for the weighted vote, fitted on labelled probabilities (the validation split).

Greedy ensemble selection with replacement (Caruana et al. 2004, as AutoGluon's weighted ensemble
does it): start empty, and each round add the member (again, if it helps most) whose addition gives
the averaged probabilities the lowest log loss; a member's weight is how often it was picked over
the number of rounds. Picks with replacement and a fixed number of rounds keep the weights coarse
(multiples of 1/ROUNDS), which is what keeps them from fitting a small validation split's noise.
`log_loss_weights` is the smooth alternative: the simplex weights that minimise the log loss;
benchmarks/bench_vote.py measures both (RESULTS.md, "Vote rules"). Neither has a maintained
library here: AutoGluon's is inside its tabular package, a heavy dependency for thirty lines.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

ROUNDS = 25  # AutoGluon's default ensemble_size is 25; more rounds only refine the fractions
TINY = 1e-12  # log(0) guard, as quorum.calibration


def caruana_weights(probs: np.ndarray, y_true: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """(members,) weights summing to 1, from probs (members, images, classes) and labels (images,)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    picked = np.zeros(len(probs), np.int64)
    total = np.zeros(probs.shape[1:])
    for step in range(1, rounds + 1):
        # The first minimum: on a tie the earlier member, so the same inputs give the same weights.
        losses = [log_loss((total + member) / step, y_true) for member in probs]
        best = int(np.argmin(losses))
        picked[best] += 1
        total += probs[best]
    return picked / rounds


def log_loss_weights(probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """(members,) weights on the simplex minimising the log loss of the weighted mean (softmax-parametrised)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)

    def loss(theta: np.ndarray) -> float:
        return log_loss(np.tensordot(_softmax(theta), probs, axes=1), y_true)

    result = minimize(loss, np.zeros(len(probs)), method="L-BFGS-B")
    return _softmax(result.x)


METHODS = {"caruana": caruana_weights, "log-loss": log_loss_weights}


def log_loss(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of `y_true` under `probs` (images, classes)."""
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], TINY, 1.0)).mean())


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max())
    return e / e.sum()
