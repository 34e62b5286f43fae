"""How members' predictions become one label per image, by one of three rules (`RULES`).

majority (the default): each member votes its top-1 label; the label with the most votes wins. Ties go to the
tie-breaker member when its label is among the tied labels; otherwise to the tied label with
the highest mean probability across members. For three members: two or three agree -> that
label; all differ -> the tie-breaker's label.

If the mean probabilities also tie exactly, the lowest class index wins, so the result is
deterministic. Both kinds of tie report decided_by="tie-breaker".

soft: the class with the highest mean probability over the members. weighted: the same with one
weight per member (`predict.weights`, fitted on validation). Both use the members' full
probabilities, which a hard vote throws away (issue 20: +1.2 points over majority's +0.75 on one
check). For every rule `votes` and `decided_by` still describe the members' top-1 labels: how many
voted for the winner, and whether they were unanimous, had a majority or tied.

The vote's own temperature: a mean of calibrated members is under-confident (each member's errors are
partly its own, so averaging flattens the winner's probability), so every rule's `combined` is calibrated
once more by one temperature fitted on the shared validation split (`fit_vote_temperature`: pool, then
calibrate). Like the members' temperatures it never changes a label. Issue 19: the vote's ECE on a
held-out folder 0.031 / 0.025 / 0.032 -> 0.030 / 0.018 / 0.018 on three validation draws.

Lazy mode runs members one at a time and skips an image for the remaining members once
`settled` says no later vote can change its winner; `vote(..., ran=mask)` then counts only the
members that ran. The winning label is the same as if every member had run. `decided_by` is
what a full run would say wherever the skipped members could not change it, and `unknown` where
they could (two cheap members agree: the third may make it unanimous or not); `votes`,
`members` and `confidence` describe the members that actually voted.
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import rel_entr

from quorum.calibration import calibrate, fit_temperature
from quorum.errors import QuorumError

DECIDED_BY = ("unanimous", "majority", "tie-breaker")
UNANIMOUS, MAJORITY, TIE_BREAKER = DECIDED_BY
RULES = ("majority", "soft", "weighted")
MAJORITY_RULE, SOFT, WEIGHTED = RULES
UNKNOWN = "unknown"  # lazy only: the skipped members could still change how (never what) it was decided


@dataclass(frozen=True)
class Votes:
    """One entry per image."""

    label: np.ndarray  # int: the winning class index
    votes: np.ndarray  # int: members that voted for the winner
    members: np.ndarray  # int: members that voted on this image
    decided_by: np.ndarray  # str: one of DECIDED_BY
    confidence: np.ndarray  # float: the winner's probability in `combined`
    combined: np.ndarray  # float (images, classes): the rule's probabilities (majority and soft: the mean)


def vote(probs: np.ndarray, tie_breaker: int, ran: np.ndarray | None = None, rule: str = MAJORITY_RULE,
         weights=None, decimals: int | None = None, temperature: float = 1.0) -> Votes:
    """Apply the vote `rule` to `probs` of shape (members, images, classes).

    `ran` (members, images), if given, is False where a member skipped an image: that member
    neither votes nor counts in the mean probability there. `weights` (members,): the weighted
    rule's. `decimals`: soft and weighted take the argmax of `combined` rounded to that many
    decimals (ties to the lowest class), so a CSV that holds it rounded gives the same label.
    `temperature`: the vote's own (`fit_vote_temperature`), applied to `combined`.
    """
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (members, images, classes), got shape {probs.shape}")
    n_members, n_images, n_classes = probs.shape
    _check_tie_breaker(tie_breaker, n_members)
    ran = np.ones((n_members, n_images), bool) if ran is None else np.asarray(ran, bool)
    if ran.shape != (n_members, n_images):
        raise ValueError(f"ran must have shape {(n_members, n_images)}, got {ran.shape}")
    members = ran.sum(axis=0)
    if (members == 0).any():
        raise ValueError("every image needs at least one member that ran")

    top = probs.argmax(axis=2)
    one_hot = (top[..., None] == np.arange(n_classes)) & ran[..., None]
    counts = one_hot.sum(axis=0)  # (images, classes)
    best = counts.max(axis=1)
    tied = counts == best[:, None]  # a single True where one label leads outright
    mean = mean_probability(probs, ran)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if (rule == WEIGHTED) != (weights is not None):
        raise ValueError("the weighted rule, and only it, takes weights")

    images = np.arange(n_images)
    tb_label = top[tie_breaker]
    tb_in_tie = ran[tie_breaker] & tied[images, tb_label]
    # argmax takes the first maximum, which gives the lowest index on an exact tie.
    by_mean = np.where(tied, mean, -np.inf).argmax(axis=1)
    # With one leader, tb_in_tie means the tie-breaker voted it and by_mean is it anyway.
    label = np.where(tb_in_tie, tb_label, by_mean)
    combined = mean if rule == MAJORITY_RULE else mean_probability(probs, ran, weights)
    if temperature != 1:  # keeps each row's order, so majority's ties above are settled as without it
        combined = calibrate(combined, temperature)
    if rule != MAJORITY_RULE:
        combined = combined if decimals is None else combined.round(decimals)
        label = combined.argmax(axis=1)  # the first maximum: the lowest class on an exact tie

    decided_by = np.where(tied.sum(axis=1) > 1, TIE_BREAKER, MAJORITY).astype(object)
    decided_by[best == n_members] = UNANIMOUS  # every member ran and agreed
    # Where members were skipped, only an outright majority that no skipped vote can tie or
    # join into unanimity is what a full run would say too.
    left = n_members - members
    runner_up = np.sort(counts, axis=1)[:, -2] if n_classes > 1 else np.zeros(n_images, int)
    majority_for_sure = (best < members) & (best > runner_up + left)
    decided_by[(left > 0) & ~majority_for_sure] = UNKNOWN
    return Votes(
        label=label,
        votes=counts[images, label],  # majority: the leader's count; soft may pick a label fewer voted
        members=members,
        decided_by=decided_by,
        confidence=combined[images, label],
        combined=combined,
    )


def mean_probability(probs: np.ndarray, ran: np.ndarray, weights=None) -> np.ndarray:
    """(images, classes): each class's mean probability over the members that ran on each image, each
    member counted `weights[m]` times (default once). Skipped members are zeroed out rather than
    multiplied: their probabilities may be missing (NaN)."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(probs),) or (w < 0).any():
        raise ValueError(f"weights must be {len(probs)} numbers >= 0, got {weights}")
    counted = ran * w[:, None]  # (members, images)
    if (counted.sum(axis=0) <= 0).any():
        raise ValueError("every image needs a member with a positive weight that ran")
    return (np.where(ran[..., None], probs, 0.0) * w[:, None, None]).sum(axis=0) / counted.sum(axis=0)[:, None]


def fit_vote_temperature(probs: np.ndarray, y_true: np.ndarray, rule: str = MAJORITY_RULE, weights=None) -> float:
    """The vote's temperature: the one that calibrates `rule`'s combined probabilities of `probs` (members,
    images, classes; the members' calibrated validation predictions) against `y_true`. 1 for one member,
    whose own temperature already is the vote's."""
    probs = np.asarray(probs, dtype=float)
    if len(probs) == 1:
        return 1.0
    combined = mean_probability(probs, np.ones(probs.shape[:2], bool), weights if rule == WEIGHTED else None)
    return round(fit_temperature(combined, y_true), 6)  # as model.json rounds the members'


def consensus_kl(probs: np.ndarray, ran: np.ndarray) -> np.ndarray:
    """(images,): the mean KL divergence (nats) of each member's probabilities from their mean, over the
    members that ran (McCallum and Nigam's consensus KL, query-by-committee's disagreement; it equals the
    entropy of the mean less the members' mean entropy). 0 where they agree exactly, ln(members) at most."""
    mean = mean_probability(probs, ran)
    each = rel_entr(np.where(ran[..., None], probs, 0.0), mean[None]).sum(axis=2)  # a skipped member: 0
    return (each * ran).sum(axis=0) / ran.sum(axis=0)


def default_tie_breaker(accuracies: list[float], names: list[str], among: list[int] | None = None) -> int:
    """The member with the best validation accuracy, the first by name on a tie, among `among` (default:
    all). The one rule for predict, report and demo: it does not depend on the order members were given in."""
    among = list(range(len(accuracies))) if among is None else among
    return min(among, key=lambda m: (-accuracies[m], names[m]))


def settled(labels: np.ndarray, n_members: int, tie_breaker: int) -> np.ndarray:
    """Which images' winners no longer depend on the members still to run.

    `labels` (k, images) holds the top-1 labels of members 0..k-1: members run in index order,
    so order `probs` for `vote` the same way. `tie_breaker` is the same member index given to
    `vote`; it has voted once it is below k. Exact: True only if every vote and probability the
    remaining members could give leaves the winner unchanged.
    """
    labels = np.asarray(labels)
    k, n_images = labels.shape
    _check_tie_breaker(tie_breaker, n_members)
    if k > n_members:
        raise ValueError(f"labels has {k} members' votes but there are only {n_members}")
    if k == n_members:
        return np.ones(n_images, bool)  # nothing left to change the outcome
    if k == 0:
        return np.zeros(n_images, bool)

    # count[i, n]: how many members voted the same label as member i on image n.
    count = (labels[:, None, :] == labels[None, :, :]).sum(axis=1)
    leader = labels[count.argmax(axis=0), np.arange(n_images)]
    leader_count = count.max(axis=0)
    other_count = np.where(labels != leader, count, 0).max(axis=0)
    left = n_members - k
    # The remaining members can at best lift the runner-up to a tie with the leader; the
    # tie-breaker resolves that tie for the leader only if it has already voted for it.
    tie_breaker_backs_leader = labels[tie_breaker] == leader if tie_breaker < k else False
    return (leader_count > other_count + left) | (
        (leader_count == other_count + left) & tie_breaker_backs_leader
    )


def check_rule(rule: str, lazy: bool = False) -> None:
    """A user's rule, checked before any model loads: --lazy's early exit is exact only for majority
    (`settled` reasons about vote counts, not about probabilities still to come)."""
    if rule not in RULES:
        raise QuorumError(f"--vote {rule} is not a rule: choose from {', '.join(RULES)}")
    if lazy and rule != MAJORITY_RULE:
        raise QuorumError(f"--lazy skips members only where they cannot change a majority vote: drop --lazy for "
                          f"--vote {rule}, or use --vote majority with it")


def _check_tie_breaker(tie_breaker: int, n_members: int) -> None:
    if not 0 <= tie_breaker < n_members:
        raise ValueError(f"tie_breaker must be a member index in 0..{n_members - 1}, got {tie_breaker}")
