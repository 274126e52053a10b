"""Benchmarks: `csr eval` (evaluate.py) runs the tasks of the registry (registry.py) on one checkpoint.

Each task is one module (chair.py, pope.py) that owns its data, its scoring, and the metrics it reports
with their direction and meaning (task.py's `Task`); the loop's round selection and the report read
the directions and docs from the registry, so a new benchmark is one module plus one `register` line.
"""
