"""What a run reports.

table.py     every metric once: reduction, logged name, the row kind it needs, its curve
logger.py    metrics.jsonl + TensorBoard (a resumed run rewrites from its step)
progress.py  the progress bar
report.py    comparison table and PNG curves, read back from metrics.jsonl
"""
