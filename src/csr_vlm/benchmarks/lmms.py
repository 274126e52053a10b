"""The lmms-eval hand-off: the paper's other benchmarks (MME, SEED, LLaVA-W, MMBench, MM-Vet, SQA, VizWiz, GQA).

`eval.lmms_tasks` names lmms-eval tasks; `csr eval` runs them on the stage's checkpoint in a subprocess
(lmms-eval mutes warnings, re-seeds and patches file locking in the process that imports it):

    python -m lmms_eval --model <eval.lmms_model> --model_args pretrained=<checkpoint>,device_map=<device>
        --tasks <eval.lmms_tasks> [--include_path <eval.lmms_include_path>] --batch_size 1 --device <device>
        --output_path <out>/lmms --log_samples [eval.lmms_args as --key value]

Its CLI exits 0 even when the evaluation failed, so success is read from the files: one new
`*_results.json` holding every task asked for, each with samples. Otherwise the stage fails with the
error lmms-eval logged. The numbers go to metrics.json under "lmms" ({task: {metric: value}}, the
"none" filter dropped from the names) and to "flat" as `lmms_<task>_<metric>`, which `loop.select_on`
and the guards may name (higher is better, but for CHAIR rates).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ..errors import InputError

MODELS = {"llava": "llava_hf", "llava_next": "llava_hf", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}
"""The lmms-eval model class for a checkpoint's model_type (others: set eval.lmms_model)."""

INSTALL = "pip install 'csr-vlm[lmms]' (or bash scripts/setup.sh --lmms)"


def check_installed() -> None:
    """InputError (one line, with the install command) when lmms-eval is not importable here."""
    if importlib.util.find_spec("lmms_eval") is None:
        raise InputError(f"eval.lmms_tasks needs lmms-eval, which is not installed: {INSTALL}")


def model_name(model_path: str, configured: str) -> str:
    """eval.lmms_model, else the lmms-eval model for the checkpoint's model_type."""
    if configured:
        return configured
    config = Path(model_path) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type not in MODELS:
        raise InputError(f"eval.lmms_model: no lmms-eval model is known for model_type {model_type!r}; set "
                         f"eval.lmms_model (e.g. {', '.join(sorted(set(MODELS.values())))})")
    return MODELS[model_type]


def run(model_path: str, ev, out: Path, device: str) -> dict:
    """Run lmms-eval on the checkpoint; returns metrics.json's "lmms" section.

    Raises:
        InputError: lmms-eval failed (its own error line), or a task has no result.
    """
    check_installed()
    out = Path(out) / "lmms"
    before = set(out.glob("*/*_results.json"))
    model_args = ",".join([f"pretrained={model_path}", f"device_map={device}",
                           *(f"{k}={v}" for k, v in ev.lmms_model_args.items())])
    cmd = [sys.executable, "-m", "lmms_eval", "--model", model_name(model_path, ev.lmms_model), "--model_args",
           model_args, "--tasks", ",".join(ev.lmms_tasks), "--batch_size", "1", "--device", device,
           "--output_path", str(out), "--log_samples"]
    if ev.lmms_include_path:
        cmd += ["--include_path", ev.lmms_include_path]
    for key, value in ev.lmms_args.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    new = sorted(set(out.glob("*/*_results.json")) - before)
    if proc.returncode != 0 or len(new) != 1:
        raise InputError(f"eval.lmms_tasks: lmms-eval failed ({_error_line(proc.stdout + proc.stderr)})")
    results = json.loads(new[0].read_text())
    section = {}
    for task in ev.lmms_tasks:
        scores = results.get("results", {}).get(task)
        samples = (results.get("n-samples", {}).get(task) or {}).get("effective", 0)
        if not scores or not samples:
            raise InputError(f"eval.lmms_tasks: lmms-eval gave no result for {task!r} ({_error_line(proc.stderr)})")
        section[task] = {_metric(k): v for k, v in scores.items() if "," in k and "_stderr" not in k
                         and isinstance(v, (int, float))}
        section[task]["n_samples"] = samples
    section["results_file"] = str(new[0])
    return section


def flat(section: dict) -> dict[str, float]:
    """`lmms_<task>_<metric>` for every number of every task (n_samples excluded)."""
    return {f"lmms_{_name(task)}_{_name(metric)}": value for task, scores in section.items() if isinstance(scores,
                                                                                                           dict)
            for metric, value in scores.items() if metric != "n_samples"}


def lower_is_better(name: str) -> bool:
    """lmms metrics are better when higher, but for the CHAIR rates (coco_cap_chair_s / _i)."""
    return "chair_s" in name or "chair_i" in name


def _metric(key: str) -> str:
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric}_{filt}"


def _name(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _error_line(log: str) -> str:
    """The most telling line of lmms-eval's output: its 'Error during evaluation' line, else the last error."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines() if ln.strip()]
    for marker in ("Error during evaluation", "Error", "error"):
        found = [ln for ln in lines if marker in ln]
        if found:
            return found[-1][-300:]
    return lines[-1][-300:] if lines else "no output"
