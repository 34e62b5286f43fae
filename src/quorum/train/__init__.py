"""`quorum finetune`: the two-phase recipe, its epochs, feature cache and checkpoints."""
