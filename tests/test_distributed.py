"""Process-group choices that do not need a second process to check."""

from __future__ import annotations

import pytest

from quorum.distributed import backend_for


@pytest.mark.parametrize(("requested", "cuda", "backend"), [
    ("cpu", True, "gloo"),  # --device cpu on a GPU machine: nccl cannot carry CPU tensors
    ("mps", True, "gloo"),
    ("auto", True, "nccl"),
    ("cuda", True, "nccl"),
    ("cuda:1", True, "nccl"),
    ("auto", False, "gloo"),
])
def test_the_backend_follows_the_device_actually_used(requested, cuda, backend):
    assert backend_for(requested, cuda_available=cuda) == backend
