"""What people look at: MLflow tracking on rank 0 (`tracker.py`), the bits/dim report against the published
numbers (`report.py`, `python -m pipeline.tracking.report`), sample grids (`figures.py`) and the classical
codecs' baselines (`baselines.py`).
"""
