"""`quorum report`: scores, timing, pictures and the self-contained HTML page."""
