"""Commands that work on a finished (or running) run: `python -m pipeline.tools.<name>` with name
evaluate, sample, export (consolidated weights), heartbeat (every rank's last word), run_figures.
"""
