"""Which rows of a predictions table a person should label first: query-by-committee ranking.

Read from a `quorum predict` CSV (and, for `diverse`, the listed images' frozen features):
- `disagreement`: query-by-committee: the members' consensus KL (`consensus_kl`, which predict --probs
  writes: each member's calibrated probabilities' KL divergence from their mean, averaged; modAL's
  `KL_max_disagreement` takes the largest instead of the mean) joined with the margin: each row by the mean
  of its two ranks, so a row must be both disputed and close, not disputed by one sure member alone (those
  picks were worth less than random ones in benchmarks/bench_active.py). In a CSV without the column, vote
  entropy over the members' labels (modAL's `vote_entropy`) takes its place.
- `margin`: 1 - (top mean probability - second), from the p_<class> columns (predict --probs); in a
  CSV without them, 1 - the vote's confidence. `balanced` and `diverse` order by it too.
- `balanced`: margin, but the most uncertain row of each predicted class in turn (class-balanced
  uncertainty sampling), so that a budget is not spent on two or three confusable classes.
- `diverse`: margin, but the most uncertain row of each k-means cluster of the images' features (k =
  the budget; Cluster-Margin / TypiClust's lesson: in the low-budget regime cover the data, then be uncertain).
- `random`: a seeded shuffle, the baseline every ranking must beat.

Rows flagged `unknown` (a column some predictions carry) are kept apart, never ranked: an image of
no known class is not worth a label of a known one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import entropy, rankdata

from quorum.data.predictions_csv import class_columns, flagged_unknown
from quorum.errors import QuorumError
from quorum.predict.table import CONSENSUS_KL, OK, member_columns, members_of

RANKINGS = ("disagreement", "margin", "balanced", "diverse", "random")
DEFAULT = "margin"  # level with disagreement in benchmarks/bench_active.py (RESULTS.md), both within its noise


def probability_columns(frame: pd.DataFrame) -> list[str]:
    return class_columns(frame.columns)


def vote_entropy(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the entropy (nats) of the members' votes; members that did not run (--lazy) are left out."""
    labels = frame[[member_columns(name)[0] for name in members_of(frame.columns)]]
    counts = labels.apply(lambda row: row.value_counts().to_numpy(), axis=1)
    return np.array([entropy(row) if len(row) else 0.0 for row in counts], dtype=float)


def disagreement(frame: pd.DataFrame) -> np.ndarray:
    """The members' consensus KL where the CSV has it (predict --probs), else their vote entropy."""
    return frame[CONSENSUS_KL].to_numpy(float) if CONSENSUS_KL in frame.columns else vote_entropy(frame)


def margin_score(frame: pd.DataFrame) -> np.ndarray:
    """1 - (largest - second largest mean probability): 1 where the two lead classes tie, 0 where one has it all."""
    columns = probability_columns(frame)
    top_two = -np.sort(-frame[columns].to_numpy(dtype=float), axis=1)[:, :2]
    return 1.0 - (top_two[:, 0] - top_two[:, 1])


def doubt(frame: pd.DataFrame) -> np.ndarray:
    """The margin score where the CSV has the mean probabilities (predict --probs), else 1 - the vote's confidence."""
    return margin_score(frame) if len(probability_columns(frame)) >= 2 else 1.0 - frame["confidence"].to_numpy(float)


def joint_rank(*scores: np.ndarray) -> np.ndarray:
    """Per row, the mean of its ranks under each score, as a share from 0 to 1 (1: first under every one; ties
    share their mean rank): a row must rank high under all of them, not be extreme under one."""
    if not len(scores[0]):
        return np.zeros(0)
    return np.mean([rankdata(score) for score in scores], axis=0) / len(scores[0])


def round_robin(groups: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Row positions taking the highest-scoring row of each group in turn (the groups in order of their best)."""
    within = np.lexsort((-score, groups))  # by group, best first inside each
    sorted_groups = groups[within]
    turn = np.arange(len(groups)) - np.searchsorted(sorted_groups, sorted_groups)  # 0 for each group's best
    return within[np.lexsort((-score[within], turn))]


def feature_clusters(features: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means cluster of each row's image features (cosine: the vectors are L2-normalised first)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    vectors = normalize(np.nan_to_num(features))  # an unreadable image's row of NaN: the zero vector
    clusters = min(clusters, len(np.unique(vectors, axis=0)))
    if clusters < 2:
        return np.zeros(len(vectors), dtype=int)
    return KMeans(clusters, n_init=1, random_state=seed).fit_predict(vectors)


Features = Callable[[list[str]], np.ndarray]  # paths -> (paths, features): only `diverse` asks


def rank(frame: pd.DataFrame, how: str = DEFAULT, seed: int = 0, budget: int = 100,
         features: Features | None = None) -> tuple[pd.DataFrame, int]:
    """(the readable rows not flagged unknown, best first, with `rank` from 1 and `score`; how many were kept apart)."""
    if how not in RANKINGS:
        raise QuorumError(f"unknown ranking '{how}': choose one of {', '.join(RANKINGS)}")
    ok = frame[frame["status"] == OK]
    apart = flagged_unknown(ok)
    rows = ok[~apart]
    if how == "random":
        score = np.random.default_rng(seed).random(len(rows))
        order = np.argsort(-score, kind="stable")
    elif how == "margin":
        score = doubt(rows)
        order = np.argsort(-score, kind="stable")
    elif how == "balanced":
        score = doubt(rows)
        order = round_robin(rows["prediction"].astype(str).to_numpy(), score)
    elif how == "diverse":
        score = doubt(rows)
        if features is None:
            raise QuorumError("--rank diverse needs the images' features: give the images' folder")
        order = round_robin(feature_clusters(features(rows["path"].tolist()), budget, seed), score) if len(rows) \
            else np.arange(0)
    else:
        score = joint_rank(disagreement(rows), doubt(rows))
        order = np.argsort(-score, kind="stable")
    ranked = rows.iloc[order].assign(score=score[order], rank=np.arange(1, len(rows) + 1))
    return ranked, int(apart.sum())


def select(frame: pd.DataFrame, budget: int, how: str = DEFAULT, seed: int = 0,
           features: Features | None = None) -> tuple[pd.DataFrame, int]:
    """The `budget` rows a person should label first, in order; and how many unknown rows were kept apart."""
    if budget < 1:
        raise QuorumError(f"--budget must be at least 1 (got {budget})")
    ranked, apart = rank(frame, how, seed, budget, features)
    return ranked.head(budget), apart
