"""Lossless image compression with a trained model (`python -m pipeline.compression encode|decode|compare`):
the coder (`codec.py`), the range coding of the model's probabilities (`rangecoding.py`), the `.prc` file
format (`prc.py`) and the comparison with PNG/WebP (`compare.py`).
"""
