import itertools
import math

import numpy as np
import pytest

from quorum.predict.vote import DECIDED_BY, consensus_kl, settled, vote

CAT, DOG, FOX, OWL = range(4)


def probs_voting(labels, n_classes=4, seed=0, alpha=1.0):
    """Random probabilities (members, images, classes) whose top-1 labels are `labels`."""
    labels = np.asarray(labels).reshape(len(labels), -1)
    probs = np.random.default_rng(seed).dirichlet(np.full(n_classes, alpha), size=labels.shape)
    # Swap each row's largest probability into the wanted label's slot.
    top = probs.argmax(axis=2)[..., None]
    wanted = labels[..., None]
    top_p = np.take_along_axis(probs, top, axis=2)
    np.put_along_axis(probs, top, np.take_along_axis(probs, wanted, axis=2), axis=2)
    np.put_along_axis(probs, wanted, top_p, axis=2)
    return probs


def one_image(labels, tie_breaker):
    """Vote on one image whose members voted `labels`; returns (label, decided_by)."""
    result = vote(probs_voting(labels), tie_breaker)
    return int(result.label[0]), str(result.decided_by[0])


# --- vote: hand-made cases --------------------------------------------------------------


@pytest.mark.parametrize("tie_breaker", range(3))
def test_three_agree_is_unanimous(tie_breaker):
    assert one_image([DOG, DOG, DOG], tie_breaker) == (DOG, "unanimous")


@pytest.mark.parametrize("labels", [[DOG, DOG, CAT], [DOG, CAT, DOG], [CAT, DOG, DOG]])
@pytest.mark.parametrize("tie_breaker", range(3))
def test_three_two_agree_is_majority_whichever_pair(labels, tie_breaker):
    assert one_image(labels, tie_breaker) == (DOG, "majority")


@pytest.mark.parametrize("tie_breaker", range(3))
def test_three_all_differ_goes_to_tie_breaker_wherever_it_sits(tie_breaker):
    labels = [CAT, DOG, FOX]
    assert one_image(labels, tie_breaker) == (labels[tie_breaker], "tie-breaker")


@pytest.mark.parametrize("tie_breaker", range(2))
def test_two_members(tie_breaker):
    assert one_image([FOX, FOX], tie_breaker) == (FOX, "unanimous")
    assert one_image([CAT, FOX], tie_breaker) == ([CAT, FOX][tie_breaker], "tie-breaker")


@pytest.mark.parametrize("tie_breaker", range(4))
def test_four_two_two_goes_to_tie_breakers_camp(tie_breaker):
    labels = [CAT, DOG, DOG, CAT]
    assert one_image(labels, tie_breaker) == (labels[tie_breaker], "tie-breaker")


@pytest.mark.parametrize("tie_breaker", range(4))
def test_four_two_one_one_is_majority(tie_breaker):
    assert one_image([FOX, CAT, FOX, OWL], tie_breaker) == (FOX, "majority")


@pytest.mark.parametrize("tie_breaker", range(4))
def test_four_all_differ_goes_to_tie_breaker(tie_breaker):
    labels = [CAT, DOG, FOX, OWL]
    assert one_image(labels, tie_breaker) == (labels[tie_breaker], "tie-breaker")


def test_tie_without_tie_breaker_goes_to_higher_mean_probability():
    # 2-2-1: CAT and DOG tie, the tie-breaker (member 4) voted FOX, outside the tie.
    probs = np.array([
        [0.6, 0.3, 0.1],
        [0.5, 0.4, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.3, 0.5],
    ])[:, None, :]
    result = vote(probs, tie_breaker=4)
    # Mean of DOG (0.52) beats CAT (0.30); the tie-breaker still counts in the means.
    assert result.label[0] == DOG
    assert result.decided_by[0] == "tie-breaker"
    assert result.votes[0] == 2
    assert result.confidence[0] == pytest.approx(0.52)


def test_exact_tie_in_mean_probability_goes_to_lowest_class_index():
    probs = np.array([
        [0.0, 0.1, 0.9, 0.0],  # FOX
        [0.0, 0.1, 0.9, 0.0],  # FOX
        [0.0, 0.9, 0.1, 0.0],  # DOG
        [0.0, 0.9, 0.1, 0.0],  # DOG
        [0.3, 0.0, 0.0, 0.7],  # OWL, the tie-breaker
    ])[:, None, :]
    assert vote(probs, tie_breaker=4).label[0] == DOG


def test_confidence_is_mean_probability_of_winner_over_all_members():
    probs = np.array([[[0.7, 0.3]], [[0.6, 0.4]], [[0.2, 0.8]]])
    result = vote(probs, tie_breaker=2)
    assert result.label[0] == CAT
    assert result.confidence[0] == pytest.approx((0.7 + 0.6 + 0.2) / 3)


def test_vectorised_over_images_and_counts_fields():
    per_image = [[CAT, CAT, CAT], [CAT, DOG, FOX], [DOG, OWL, OWL]]
    probs = probs_voting(np.transpose(per_image))  # members x images
    result = vote(probs, tie_breaker=0)
    assert result.label.tolist() == [CAT, CAT, OWL]
    assert result.votes.tolist() == [3, 1, 2]
    assert result.members.tolist() == [3, 3, 3]
    assert result.decided_by.tolist() == ["unanimous", "tie-breaker", "majority"]
    assert set(result.decided_by) <= set(DECIDED_BY)


def test_skipped_members_neither_vote_nor_count_in_confidence():
    probs = np.array([[[0.9, 0.1]], [[0.7, 0.3]], [[np.nan, np.nan]]])
    ran = np.array([[True], [True], [False]])
    result = vote(probs, tie_breaker=2, ran=ran)
    assert result.label[0] == CAT
    assert result.votes[0] == 2
    assert result.members[0] == 2
    # Neither "unanimous" nor "majority": the member that never voted decides which a full run says.
    assert result.decided_by[0] == "unknown"
    assert result.confidence[0] == pytest.approx(0.8)


def test_skipped_tie_breaker_leaves_ties_to_mean_probability():
    probs = np.array([[[0.6, 0.4, 0.0]], [[0.1, 0.9, 0.0]], [[0.0, 0.0, 1.0]]])
    ran = np.array([[True], [True], [False]])
    assert vote(probs, tie_breaker=2, ran=ran).label[0] == DOG


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"probs": np.ones((2, 3)), "tie_breaker": 0}, "members, images, classes"),
        ({"probs": np.ones((2, 3, 4)), "tie_breaker": 2}, "0..1"),
        ({"probs": np.ones((2, 3, 4)), "tie_breaker": 0, "ran": np.ones((3, 2))}, "ran must"),
        ({"probs": np.ones((2, 1, 4)), "tie_breaker": 0, "ran": np.zeros((2, 1))}, "at least one"),
    ],
)
def test_vote_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vote(**kwargs)


# --- settled ---------------------------------------------------------------------------


def test_reference_trio_settles_when_first_two_agree():
    # Members run as [m64, m224, resnet]; resnet (position 2) breaks ties.
    assert settled(np.array([[DOG], [DOG]]), n_members=3, tie_breaker=2).tolist() == [True]
    assert settled(np.array([[DOG], [CAT]]), n_members=3, tie_breaker=2).tolist() == [False]
    assert settled(np.array([[DOG]]), n_members=3, tie_breaker=2).tolist() == [False]


def test_tie_breaker_vote_settles_a_lead_the_rest_can_only_tie():
    # Four members, two left: 2-0 can become 2-2, which the tie-breaker's camp wins.
    assert settled(np.array([[DOG], [DOG]]), n_members=4, tie_breaker=0).tolist() == [True]
    assert settled(np.array([[DOG], [DOG]]), n_members=4, tie_breaker=3).tolist() == [False]


def test_everyone_voted_is_settled():
    assert settled(np.array([[CAT], [DOG]]), n_members=2, tie_breaker=0).tolist() == [True]


@pytest.mark.parametrize("n_members", range(2, 6))
def test_settled_never_claims_a_winner_the_rest_could_change(n_members):
    n_classes = 3
    # Every full vote sequence, each under three probability draws (one sharp).
    sequences = np.array(list(itertools.product(range(n_classes), repeat=n_members))).T
    labels = np.concatenate([sequences] * 3, axis=1)
    probs = np.concatenate(
        [probs_voting(sequences, n_classes, seed, alpha) for seed, alpha in enumerate([1, 1, 0.2])],
        axis=1,
    )
    place_values = n_classes ** np.arange(n_members)
    any_settled_early = False
    for tie_breaker in range(n_members):
        winners = vote(probs, tie_breaker).label
        for k in range(1, n_members):
            is_settled = settled(labels[:k], n_members, tie_breaker)
            prefix = place_values[:k] @ labels[:k]
            for key in np.unique(prefix[is_settled]):
                # Same first k votes: every completion must elect the same label.
                assert len(set(winners[prefix == key])) == 1
            any_settled_early |= is_settled.any()
    assert any_settled_early


def test_settled_rejects_more_votes_than_members():
    with pytest.raises(ValueError, match="only 2"):
        settled(np.zeros((3, 1), int), n_members=2, tie_breaker=0)


# --- lazy mode --------------------------------------------------------------------------


def run_lazily(probs, tie_breaker):
    """Run members in order, skipping images `settled` has decided; hide skipped probabilities."""
    n_members, n_images, _ = probs.shape
    ran = np.zeros((n_members, n_images), bool)
    labels = np.full((n_members, n_images), -1)
    pending = np.ones(n_images, bool)
    for member in range(n_members):
        ran[member, pending] = True
        labels[member, pending] = probs[member, pending].argmax(axis=1)
        pending[pending] = ~settled(labels[: member + 1, pending], n_members, tie_breaker)
    hidden = np.where(ran[..., None], probs, np.nan)
    return vote(hidden, tie_breaker, ran), ran


@pytest.mark.parametrize("n_members, tie_breaker", [(3, 2), (3, 0), (5, 1), (5, 4)])
def test_lazy_run_gives_the_same_labels_as_the_full_vote(n_members, tie_breaker):
    n_images, n_classes = 2000, 3
    rng = np.random.default_rng(n_members)
    probs = rng.dirichlet(np.ones(n_classes), size=(n_members, n_images))
    lazy, ran = run_lazily(probs, tie_breaker)
    np.testing.assert_array_equal(lazy.label, vote(probs, tie_breaker).label)
    assert ran.sum() < ran.size  # some member work was actually saved


@pytest.mark.parametrize("n_members, tie_breaker", [(3, 2), (3, 0), (4, 1), (5, 1), (5, 4)])
def test_lazy_decided_by_is_the_full_runs_wherever_it_is_not_unknown(n_members, tie_breaker):
    n_images, n_classes = 3000, 3
    probs = np.random.default_rng(n_members + 10 * tie_breaker).dirichlet(np.ones(n_classes),
                                                                          size=(n_members, n_images))
    lazy, ran = run_lazily(probs, tie_breaker)
    full = vote(probs, tie_breaker)
    complete = ran.all(axis=0)
    known = lazy.decided_by != "unknown"
    np.testing.assert_array_equal(lazy.decided_by[known], full.decided_by[known])
    assert known[complete].all()  # unknown only where a member was skipped
    if n_members == 3:  # two agreed, the third was skipped: unanimous or majority, nobody knows which
        assert (lazy.decided_by[~complete] == "unknown").all() and (~complete).any()
    if n_members == 5:  # 3-1 after four members, one left: a majority whatever the fifth says
        assert ((lazy.decided_by == "majority") & ~complete).any()


def test_consensus_kl_is_the_members_mean_kl_from_their_mean_over_the_members_that_ran():
    probs = np.array([
        [[0.8, 0.2], [0.5, 0.5], [0.9, 0.1]],
        [[0.4, 0.6], [0.5, 0.5], [np.nan, np.nan]],  # image 3: this member was skipped (--lazy)
        [[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]],
    ])
    ran = np.array([[True, True, True], [True, True, False], [True, True, True]])
    # By hand, image 1: the mean is (0.6, 0.4); the middle member's KL from it 0.4 ln(0.4/0.6) + 0.6 ln(0.6/0.4),
    # the others' a ln(a/0.6) + b ln(b/0.4). Image 3: two members (0.9, 0.1) and (0.1, 0.9), the mean (0.5, 0.5).
    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))
    first = np.mean([kl(p, (0.6, 0.4)) for p in ((0.8, 0.2), (0.4, 0.6), (0.6, 0.4))])
    assert consensus_kl(probs, ran) == pytest.approx([first, 0.0, kl((0.9, 0.1), (0.5, 0.5))])
    # Members sure of different classes: ln(members), the most there is.
    assert consensus_kl(np.eye(3)[:, None, :], np.ones((3, 1), bool)) == pytest.approx([math.log(3)])
