"""The vote's trust table where the truth is known: each model's stored validation predictions,
stacked (the same images for every member), replayed through the vote `quorum predict` uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from quorum.errors import QuorumError
from quorum.predict.members import read_members, tie_breaker_index
from quorum.predict.trust_table import coverage_curve, trust_table
from quorum.predict.vote import vote
from quorum.report.sources import Labelled, mismatch, read_validation, stack_validation


def trust(labelled: Labelled, tie_breaker: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trust table, coverage-accuracy curve) of the vote on `labelled`."""
    result = vote(labelled.probs, tie_breaker)
    return trust_table(labelled.y_true, result), coverage_curve(labelled.y_true, result)


def validation_trust(model_dirs: list[Path], tie_breaker: str | None = None,
                     passed: Collection[str] | None = None) -> pd.DataFrame | None:
    """The trust table on the shared validation split, or None where there is none to replay
    (one member, members validated on different images, or stored predictions missing).

    With `passed` (the validation images a predict run's unknown line lets through, `Threshold.passed`), the
    others are left out, as predict leaves flagged rows out of its trusted lines: each line then describes
    the same rows."""
    try:
        infos = read_members(sorted(model_dirs, key=lambda path: Path(path).name))
        if len(infos) < 2:
            return None
        runs = [read_validation(info) for info in infos]
        if mismatch(infos, runs) is not None:
            return None
        labelled = stack_validation(infos, runs)
        if passed is not None:
            kept = np.isin(labelled.paths, list(passed))
            labelled = dataclasses.replace(labelled, paths=[p for p, keep in zip(labelled.paths, kept) if keep],
                                           y_true=labelled.y_true[kept], probs=labelled.probs[:, kept])
        return trust(labelled, tie_breaker_index(infos, tie_breaker))[0]
    except QuorumError:  # a summary line is not worth failing a finished predict over
        return None
