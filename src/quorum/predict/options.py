"""What a predict run is asked to do: every option in one object, checked before any model loads.

The options above the line change a row, so `run_identity` records them; those below only change how
fast the rows come (and which engine runs a member, which `run_identity` records as it resolved it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quorum.errors import QuorumError
from quorum.models.engine import check_engine
from quorum.predict.vote import MAJORITY_RULE, check_rule


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def positions(self, n: int) -> list[int]:
        """This shard's positions in a sorted list of n files."""
        return list(range(self.index, n, self.count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard()


def parse_shard(text: str) -> Shard:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise QuorumError(f"--shard takes I/N with I from 0 to N-1, e.g. 0/4 ... 3/4 "
                          f"(like SLURM_ARRAY_TASK_ID with --array=0-3); got '{text}'")
    return Shard(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class PredictOptions:
    tie_breaker: str | None = None  # a member's name; None: the member with the best validation accuracy
    rule: str = MAJORITY_RULE  # `vote.RULES`
    tta: int = 1  # views per image and member (1: none)
    lazy: bool = False  # skip the members that can no longer change an image's winner
    probs: bool = False  # add p_<class> columns
    min_agreement: float | None = None  # add a review column, true below this agreement
    unknown_keep: float | None = None  # `unknown.threshold`; None: its default where the members allow
    flag_unknown: bool = True  # False: leave the unknown column empty
    shard: Shard = WHOLE
    # ---- how the rows are computed, not what they are
    device: str = "auto"
    engine: str = "auto"
    batch_size: int = 32
    workers: int = 2

    def check(self) -> None:
        """A mistake costs seconds, not a model load or a decoded folder."""
        check_engine(self.engine, self.device)
        check_rule(self.rule, self.lazy)
        if self.batch_size < 1:
            raise QuorumError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise QuorumError(f"--min-agreement must be between 0 and 1 (got {self.min_agreement})")
        from quorum.data.preprocess import TTA_MAX_VIEWS  # loads torch: the checks above stay cheap
        from quorum.predict.unknown import check_keep

        if self.unknown_keep is not None:
            check_keep(self.unknown_keep)
        if not 1 <= self.tta <= TTA_MAX_VIEWS:
            raise QuorumError(f"--tta {self.tta} is not a number of views: give 1 (none) to {TTA_MAX_VIEWS}")
