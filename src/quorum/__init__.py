"""quorum: fine-tune several image classifiers and let them vote."""

__version__ = "0.1.0"
