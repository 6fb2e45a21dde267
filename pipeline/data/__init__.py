"""Reading the shards `preprocessing` writes (the format both sides import from `shardformat`).

`manifest.py`: a split's manifest, torch-free; `plan.py`: the data plan, which samples each reader reads
in an epoch and each rank evaluates (pure, torch-free); `shards.py`: a split as its manifest describes it,
decoding, samples [first, end) of a shard, whole-split iteration (the tools); `stream.py`: the
deterministic, evenly split training stream with its exact data position.
"""
