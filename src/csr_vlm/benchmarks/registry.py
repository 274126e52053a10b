"""The benchmark registry: every task `csr eval` can run, and the direction and meaning of every metric.

    register(my_task.TASK)      # a new benchmark: its module plus this one line

`lower_is_better("chair_i")` is the one direction rule the loop's selection, its guards and the
report share; a metric no registered task reports is an error, not a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..coerce import check_choice, did_you_mean
from ..errors import ConfigError
from . import chair, pope
from .task import Metric, Task

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry (its metric names must be new); returns it."""
    taken = {m.name for t in TASKS.values() if t.name != task.name for m in t.metrics}
    clash = [m.name for m in task.metrics if m.name in taken]
    if clash:
        raise ValueError(f"task {task.name!r}: metric name(s) {', '.join(clash)} already belong to another task")
    TASKS[task.name] = task
    return task


register(chair.TASK)
register(pope.TASK)


def metrics(tasks: Iterable[str] | None = None) -> dict[str, Metric]:
    """Every metric of the given tasks (default: all registered), by flat name, in task order."""
    names = TASKS if tasks is None else tasks
    return {m.name: m for t in names if t in TASKS for m in TASKS[t].metrics}


def metric_names(tasks: Iterable[str] | None = None) -> list[str]:
    """The flat metric names of the given tasks (default: all registered), in task order."""
    return list(metrics(tasks))


def lower_is_better(name: str) -> bool:
    """The direction of a flat metric of any registered task (or of an lmms-eval task: `lmms_<task>_<metric>`)."""
    if name.startswith("lmms_"):
        from .lmms import lower_is_better as lmms_lower

        return lmms_lower(name)
    known = metrics()
    if name not in known:
        raise ConfigError(f"{name!r} is not a metric of any benchmark (known: {', '.join(known)})")
    return known[name].lower_is_better


def flat_metrics(sections: dict, tasks: Iterable[str]) -> dict[str, float]:
    """The one-level summary of a metrics.json: each task's flat metrics, in task order."""
    flat: dict[str, float] = {}
    for name in tasks:
        if name in TASKS and isinstance(sections.get(name), dict):
            flat.update(TASKS[name].flat(sections[name]))
    return flat


def check_config(cfg: Any, loop: bool = False) -> None:
    """The config rules that need the registry (the schema reads no benchmark); a ConfigError names the key.

    eval.tasks and loop.dev's tasks name registered tasks; loop.select_on and the guards name metrics of the
    dev tasks; with `loop`, a loop that evaluates has the eval.annotations its tasks need.
    """
    dev = cfg.dev_eval()
    for key, ev in (("eval", cfg.eval), ("loop.dev", dev)):
        check_choice(f"{key}.tasks", ev.tasks, tuple(TASKS))
        if not ev.tasks and not ev.lmms_tasks:
            raise ConfigError(f"{key}.tasks and {key}.lmms_tasks are empty; choose from {', '.join(TASKS)} (or "
                              "name lmms-eval tasks)")
    _check_selection(cfg.loop, dev)
    if loop and (cfg.loop.evaluate or cfg.loop.select_on):
        needing = [t for t in cfg.eval.tasks if TASKS[t].needs_annotations(cfg.eval)]
        if needing and not cfg.eval.annotations:
            raise ConfigError(f"eval.annotations is not set, but loop.evaluate/select_on evaluate "
                              f"{', '.join(needing)} (set loop.evaluate=false to train without evaluating)")


def _check_selection(loop: Any, dev: Any) -> None:
    """select_on and the guards must name metrics that the dev evaluation's tasks produce."""
    known = metric_names(dev.tasks)
    lmms = tuple(f"lmms_{t}_" for t in dev.lmms_tasks)  # lmms-eval's metric names are known once it has run
    wanted = [("loop.select_on", loop.select_on)] if loop.select_on else []
    wanted += [("loop.guards", m) for m in loop.guards]
    wanted += [("loop.relative_guards", m) for m in loop.relative_guards]
    for key, metric in wanted:
        if metric not in known and not (lmms and metric.startswith(lmms)):
            raise ConfigError(f"{key}: {metric!r} is not a metric of the dev tasks ({', '.join(dev.tasks)})"
                              f"{did_you_mean(metric, known)}")
