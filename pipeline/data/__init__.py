"""Reading the shards `preprocessing` writes (the format both sides import from `shardformat`).

`shards.py`: a split as its manifest describes it, decoding, whole-split iteration (evaluation and the
tools); `stream.py`: the deterministic, evenly split training stream with its exact data position.
"""
