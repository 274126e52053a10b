"""What a benchmark is to `csr eval`: its answer jobs, its scoring, and the metrics it reports.

A task turns the eval section (+ seed, + the COCO instances when given) into a `Plan`: the jobs to
answer greedily ({task, image_id, image, prompt, max_new_tokens}) and whatever its scoring needs.
`csr eval` answers every job of every task in shared batches, then calls each task's `score` with the
answers, keyed by (task, image, prompt); the result is the task's section of metrics.json. Each
`Metric` names one number of that section (`source` is its path in it) that goes into the one-level
"flat" summary the loop selects on, with its direction and a line for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One number a task reports: its flat name, direction, meaning and where it sits in the task's section."""

    name: str
    lower_is_better: bool
    doc: str
    source: tuple[str, ...]
    plot: bool = False


@dataclass(frozen=True)
class Plan:
    """The jobs of one task and the context its scoring needs (loaded before any model, so bad files fail first)."""

    jobs: list[dict]
    context: Any = None


@dataclass(frozen=True)
class Task:
    """A benchmark: name, what one answer is (for messages), metrics, and its plan and score functions.

    plan(ev, seed, instances) -> Plan; score(plan, answers, ev, out) -> the task's metrics.json section
    (it may write its own files into `out`); needs_annotations(ev) says whether eval.annotations is required.
    """

    name: str
    label: str
    metrics: tuple[Metric, ...]
    plan: Callable[[Any, int, dict], Plan]
    score: Callable[[Plan, dict, Any, Path], dict]
    needs_annotations: Callable[[Any], bool] = lambda ev: True

    def flat(self, section: dict) -> dict[str, float]:
        """The task's flat metrics found in its metrics.json section, in declaration order."""
        out = {}
        for metric in self.metrics:
            value: Any = section
            for part in metric.source:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                out[metric.name] = value
        return out


def job_key(job: dict) -> tuple[str, str, str]:
    """The key of a job's answer: (task, image, prompt)."""
    return job["task"], job["image"], job["prompt"]
