"""Labels to doubt: cleanlab's `find_label_issues` on out-of-sample probabilities.

Each image's probabilities come from a logistic-regression head fitted on the frozen features of
the other folds (K-fold), so no image grades its own label. cleanlab (confident learning,
Northcutt et al. 2021) then flags the images whose given label those probabilities contradict.
"""

from __future__ import annotations

import warnings

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from quorum.errors import QuorumError

# cleanlab flags an image whose given label is unlikely *for its class*; a label the heads still give
# 10% or more is left alone. On bench_loop.py's Fashion-MNIST slice with 5% of labels flipped (4 draws,
# in a prototype of it) this cut the clean images flagged from 9.8% to 6.7%, the flipped ones found from 81% to 79%.
MAX_GIVEN_PROBABILITY = 0.1


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, classes: int, folds: int = 5,
                                seed: int = 0) -> np.ndarray:
    """(images, classes): each row from a head that never saw that image. `labels` index `classes` classes;
    every class needs 2 images or more (a folder whose images are all unreadable has none)."""
    smallest = int(np.bincount(labels, minlength=classes).min())
    if smallest < 2:
        raise QuorumError(f"a class has {'a single readable image' if smallest else 'no readable image'}: "
                          "label issues need at least 2 per class")
    # Unit-length features, then a strongly regularised head: on Fashion-MNIST (100 per class, 5% flipped)
    # this flagged the fewest clean images of the settings tried (benchmarks/bench_loop.py).
    head = make_pipeline(Normalizer(), StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
    splits = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # convergence chatter on tiny folds: the probabilities are still usable
        warnings.simplefilter("ignore")
        return cross_val_predict(head, features, labels, cv=splits, method="predict_proba")


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the likely wrong labels, most doubtful first; each image's label quality, 0 to 1)."""
    quality = get_label_quality_scores(labels, probabilities)
    # "both": an image must fail both of cleanlab's tests (per-class threshold and noise-rate pruning).
    flagged = find_label_issues(labels, probabilities, filter_by="both", return_indices_ranked_by="self_confidence")
    flagged = np.asarray(flagged, dtype=int)
    return flagged[probabilities[flagged, labels[flagged]] < MAX_GIVEN_PROBABILITY], quality
