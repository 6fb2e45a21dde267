"""Training: the loop every rank runs (`trainer.py`, `python -m pipeline.train`), the DeepSpeed engine and
its JSON (`engine.py`, `ds_config.py`, `optim.py`), the process group (`distributed.py`), heartbeats,
checkpoints that are safe to kill at any moment (`checkpoint.py`), consolidated weights (`weights.py`) and
the distributed bits/dim evaluation (`evaluate.py`).
"""
