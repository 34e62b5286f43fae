"""quorum: fine-tune several image classifiers and let them vote."""

import os

# Before torch loads OpenMP: with its default (active) waiting, a torch thread spins at the end of
# every parallel region while the loader workers or another process need that core; on a shared
# 2-core machine training then ran 17-50x slower. Passive waiting sleeps instead. A value the user
# set wins; this has no effect when torch was imported before quorum.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
