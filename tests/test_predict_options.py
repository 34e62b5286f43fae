"""PredictOptions.check: each mistake a library caller can make, named before any model loads."""

import hashlib
import os

import pytest

from quorum import files
from quorum.errors import QuorumError
from quorum.predict.options import PredictOptions, Shard, parse_shard


@pytest.mark.parametrize("options, message", [
    (dict(batch_size=0), "--batch-size must be at least 1 (got 0)"),
    (dict(min_agreement=1.5), "--min-agreement must be between 0 and 1 (got 1.5)"),
    (dict(unknown_keep=0.0), "--unknown-keep must be above 0 and at most 1 (got 0.0)"),
    (dict(tta=11), "--tta 11 is not a number of views: give 1 (none) to 10"),
    (dict(rule="soft", lazy=True), "--lazy skips members only where they cannot change a majority vote"),
    (dict(rule="loudest"), "--vote loudest is not a rule"),
])
def test_check_names_the_option_and_the_fix(options, message):
    with pytest.raises(QuorumError) as error:
        PredictOptions(**options).check()
    assert str(error.value).startswith(message)


def test_the_defaults_pass_and_a_shard_parses():
    PredictOptions().check()
    assert parse_shard(" 2/4 ") == Shard(2, 4) and str(Shard(2, 4)) == "2/4" and PredictOptions().shard.is_whole
    with pytest.raises(QuorumError, match="--shard takes I/N with I from 0 to N-1"):
        parse_shard("4/4")


def test_a_run_record_without_its_vote_or_engines_is_named_not_a_crash():
    """A run.json or part sidecar edited by hand (or by an older quorum) may lack an entry: resume and merge
    say how the runs differ instead of stopping with a TypeError."""
    from quorum.predict.run_identity import difference

    now = {"members": {"a": "1"}, "engines": {"a": "onnx"}, "vote": {"rule": "majority", "weights": None, "tta": 1}}
    assert difference({**now, "vote": None}, now) == "the vote: unrecorded then but --vote majority --tta 1 now"
    assert difference({**now, "engines": None}, now) == "engine unrecorded then but a onnx now"


def test_a_member_calibrated_since_is_named_as_changed_not_only_retrained():
    """member_digest covers model.json, which `quorum calibrate` rewrites: the words must allow for that."""
    from quorum.predict.run_identity import difference

    then, now = {"members": {"a": "1", "b": "2"}}, {"members": {"a": "1", "b": "3"}}
    assert difference(then, now) == ("member b has a different model.json or weights then and now "
                                     "(fine-tuned or calibrated again?)")


def test_a_run_recorded_by_an_older_quorum_is_named_with_what_to_do():
    """An older quorum hashed all of model.json into a member's digest (int8 block included): its progress
    or parts differ once, and the words say which and what to do, not that the member changed."""
    from quorum.predict.run_identity import DIGEST, difference

    old, now = {"members": {"a": "1"}}, {"digest": DIGEST, "members": {"a": "2"}}
    assert difference(old, now) == "then an older quorum identified the members otherwise: predict those rows again"
    assert difference(now, old, ("in p0.csv", "in p1.csv")).startswith("in p1.csv an older quorum")
    assert difference(old, {"members": {"a": "1"}}) is None  # two parts of one older run still merge


def test_a_weights_file_rewritten_in_place_gets_its_new_digest(tmp_path):
    """files.sha256 remembers a digest per process (predict checks a member's weights up to three times);
    a file rewritten with the same size, in place or by a rename over it, is read again."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    first = files.sha256(weights)
    assert files.sha256(weights) == first == hashlib.sha256(b"a" * 4096).hexdigest()
    with open(weights, "r+b") as handle:  # same size, same inode
        handle.write(b"b")
    assert files.sha256(weights) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()
    (tmp_path / "new").write_bytes(b"c" * 4096)
    os.replace(tmp_path / "new", weights)
    assert files.sha256(weights) == hashlib.sha256(b"c" * 4096).hexdigest()
