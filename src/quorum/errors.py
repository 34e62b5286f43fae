"""One exception family for every mistake a user can make; the CLI prints it as one `Error:` line."""


class QuorumError(Exception):
    """A problem the user can fix. The message names the thing and the fix."""


class WeightsUnavailable(QuorumError):
    """Pretrained weights could not be downloaded (no network, a proxy, a full disk)."""
