"""Images in: finding and decoding files, the shared train/validation split, preprocessing."""
