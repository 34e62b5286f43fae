"""`quorum predict`: members, the vote, the pipeline over a folder, the CSV, shards and resume."""
