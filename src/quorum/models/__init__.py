"""Networks: the backbone registry, blocks + head, starting weights, saved bundles, and inference."""
