"""Benchmarks: a library of tasks (CHAIR, POPE) that the `csr eval` stage (../evaluate.py) runs on a checkpoint.

Each task is one module (chair.py, pope.py) that owns its data, its scoring, and the metrics it reports
with their direction and meaning (task.py's `Task`); the loop's round selection and the report read
the directions and docs from the registry, so a new benchmark is one module plus one `register` line.
The package reads no stage and no config module: a task receives the eval section it needs.
"""
