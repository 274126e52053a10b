"""`csr loop`: rounds of generate -> train -> evaluate, resumable, with the best round picked on a dev metric.

Round k (1..loop.rounds) searches the same prompts with the policy of round k-1 (round 1:
`model.path`; later rounds: `round_<k-1>/train/checkpoint`, the merged checkpoint), trains a fresh
LoRA on that policy's pairs (so the DPO reference is the round's starting policy), and evaluates the
new checkpoint. The CLIP scorer never changes. Layout under `out`:

    config.yaml  manifest.json  best.json
    round_0/{eval,dev_eval}/                  the base model (when loop.evaluate / loop.select_on)
    round_<k>/{generate,train,eval,dev_eval}/

Resume: each stage writes its DONE marker last, so re-running the same command skips finished
stages and re-enters the interrupted one (the stage itself resumes what it can). `--from-round K`
deletes the stage dirs of rounds K and later first. Nothing finished is redone unless overwrite=true.
A finished stage is only reused under the config that made it: when `out` holds finished stages and its
config.yaml differs from this run's in a setting that changes results, the loop stops with the settings
that differ (settings that only change how it runs, `RESUME_SAFE`, may change: more rounds, other batch
sizes or guards). `--from-round K` redoes rounds K and later under the new config, with a warning that
the earlier rounds keep the old one.

Selection: `loop.select_on` names a key of evaluate's "flat" metrics, measured by a dev evaluation
(`eval` fields overridden by `loop.dev`, in `round_<k>/dev_eval/`). Each metric's direction comes from
the benchmark that reports it (benchmarks/registry.py: the CHAIR rates and the duplicate rate are better
when lower; recall and the POPE scores when higher). Only a strict improvement moves `best_round`, so ties keep
the earlier round, and round 0 (the base model) competes. `loop.patience` > 0 stops the loop after
that many rounds without improvement. Without `select_on`, the last round is the best. `loop.guards`
bounds other dev metrics (e.g. {dup_rate: 0.05}) and `loop.relative_guards` bounds them relative to
the base model (e.g. {recall: 0.9}: at least 90% of round 0's): a round that breaks one cannot be
picked, so a round that lowers CHAIR by repeating itself, or by naming fewer objects (a mute model has
CHAIR 0), is not chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from . import layout
from .benchmarks.registry import lower_is_better
from .config import changed_settings, save_config, validate
from .console import block, label
from .data import DONE_MARKER, is_done, read_json, write_json
from .distributed import init_group, is_main, world_size
from .errors import ConfigError, InputError
from .lock import output_lock
from .manifest import Manifest, key_numbers, summary_line
from .schema import RunConfig
from .tables import dict_rows, text_table

log = logging.getLogger(__name__)

READS = ("out", "seed", "overwrite", "model", "reward", "search", "vllm", "curate", "train", "eval", "data", "loop")
"""The config sections the loop reads (every one: it runs every stage); `csr loop --help` lists their keys."""
RESUME_SAFE = ("out", "overwrite", "model.device", "reward.clip_batch_size", "search.prompt_batch_size",
               "search.check_cache", "vllm.gpu_memory_utilization", "vllm.enforce_eager", "vllm.cpu_kv_cache_gib",
               "train.gradient_checkpointing", "train.save_steps", "train.save_total_limit", "train.report_to",
               "eval.batch_size", "loop.rounds", "loop.evaluate", "loop.select_on", "loop.patience", "loop.guards",
               "loop.relative_guards")


# ---------------------------------------------------------------------------- stage configs


def policy_path(cfg: RunConfig, k: int) -> str:
    """The policy round k starts from: model.path for round 1, round k-1's merged checkpoint after."""
    return cfg.model.path if k <= 1 else str(layout.checkpoint(cfg.out, k - 1))


def stage_cfg(cfg: RunConfig, k: int, stage: str) -> RunConfig:
    """The config one stage of round k runs with (a copy; cfg itself is never changed)."""
    model = dataclasses.replace(cfg.model, path=policy_path(cfg, k))
    if stage in ("eval", "dev_eval") and k > 0:
        model = dataclasses.replace(cfg.model, path=str(layout.checkpoint(cfg.out, k)))
    new = dataclasses.replace(cfg, out=str(layout.stage_dir(cfg.out, k, stage)), model=model)
    if stage == "train":
        pairs = str(layout.pairs_file(layout.stage_dir(cfg.out, k, "generate")))
        new = dataclasses.replace(new, train=dataclasses.replace(cfg.train, pairs=pairs))
    if stage == "dev_eval":
        new = dataclasses.replace(new, eval=cfg.dev_eval())
    return new


def stage_runner(stage: str):
    """The stage's run(cfg, round) -> Path, imported only when needed."""
    import importlib

    module = {"generate": "generate", "train": "train", "eval": "evaluate", "dev_eval": "evaluate"}[stage]
    return importlib.import_module(f"csr_vlm.{module}").run


# ---------------------------------------------------------------------------- work


def clear_from(out: Path, from_round: int, manifest: Manifest) -> None:
    """Delete the stage dirs of round from_round and every later round (they will be redone)."""
    for k, rdir in layout.rounds(out):
        if k >= from_round:
            for stage in layout.STAGES:
                shutil.rmtree(rdir / stage, ignore_errors=True)
            log.info("loop: --from-round %d: cleared %s", from_round, rdir)
    (out / "best.json").unlink(missing_ok=True)
    manifest.forget_from(from_round)


def do_stage(cfg: RunConfig, k: int, stage: str, manifest: Manifest, dist=None) -> Path:
    """Run one stage of round k unless its DONE marker is there; print one summary line (rank 0).

    Under torchrun (`dist`) every rank runs generate and train; an evaluation is not split across ranks, so rank 0
    runs it while the others wait. Rank 0 decides whether the stage is done, for all ranks."""
    scfg = stage_cfg(cfg, k, stage)
    sdir, name = Path(scfg.out), layout.stage_name(k, stage)
    if agreed(dist, is_done(sdir) and not cfg.overwrite):
        manifest.skipped(name, sdir)
        if is_main():
            print(summary_line(name, None, key_numbers(sdir)), flush=True)
        return sdir
    alone = dist is not None and stage in ("eval", "dev_eval")
    with manifest.stage(name, sdir) as entry:
        if is_main() or not alone:
            stage_runner(stage)(scfg, k)
        if alone:
            dist.barrier()
    entry["numbers"] = key_numbers(sdir)
    if stage == "train" and (sdir / DONE_MARKER).is_file():
        entry["engine"] = read_json(sdir / DONE_MARKER, "DONE").get("engine")
    manifest.save()
    if is_main():
        print(summary_line(name, entry["seconds"], entry["numbers"]), flush=True)
    return sdir


def agreed(dist, value):
    """Rank 0's value on every rank (one process: the value itself)."""
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def dev_metrics(cfg: RunConfig, k: int) -> dict[str, float]:
    """The select_on metric and the guarded metrics of round k's dev evaluation."""
    path = layout.stage_dir(cfg.out, k, "dev_eval") / "metrics.json"
    flat = read_json(path, "dev metrics").get("flat", {})
    names = [("loop.select_on", cfg.loop.select_on)] + [("loop.guards", g) for g in cfg.loop.guards]
    names += [("loop.relative_guards", g) for g in cfg.loop.relative_guards]
    for key, name in names:
        if name not in flat:
            raise InputError(f"{key}: {name!r} is not a metric of {path} (choose from {', '.join(sorted(flat))})")
    return {name: float(flat[name]) for _, name in names}


def passes_guards(metrics: dict[str, float], guards: dict[str, float]) -> bool:
    """A guard bounds a metric from the bad side: at most the bound when lower is better, else at least it."""
    return all(metrics[m] <= bound if lower_is_better(m) else metrics[m] >= bound for m, bound in guards.items())


def guard_bounds(values: dict[int, dict[str, float]], guards: dict[str, float] | None,
                 relative: dict[str, float] | None = None) -> dict[str, float]:
    """The absolute guards plus the relative ones turned into bounds by round 0's values (when it was measured)."""
    bounds = dict(guards or {})
    if relative and 0 in values:
        for m, factor in relative.items():
            bound = factor * values[0][m]
            bounds[m] = min(bounds.get(m, bound), bound) if lower_is_better(m) else max(bounds.get(m, bound), bound)
    return bounds


def pick_best(values: dict[int, dict[str, float]], metric: str, bounds: dict[str, float] | None = None
              ) -> tuple[int, int]:
    """(best round, rounds since it improved) over rounds in order; only strict improvements count.

    Rounds that break a bound (`guard_bounds`) cannot be picked (round 0 always can: it is the fallback)."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    best, since = None, 0
    for k in sorted(values):
        eligible = k == 0 or passes_guards(values[k], bounds or {})
        if best is None or (eligible and sign * values[k][metric] > sign * values[best][metric]):
            best, since = k, 0
        else:
            since += 1
    return best, since


def write_best(cfg: RunConfig, best: int, value: float | None) -> Path:
    """best.json: the picked round, its checkpoint (model.path for round 0), the metric and its value."""
    ckpt = cfg.model.path if best == 0 else str(layout.checkpoint(cfg.out, best))
    return write_json(Path(cfg.out) / "best.json",
                      {"round": best, "checkpoint": ckpt, "select_on": cfg.loop.select_on or None, "value": value})


def round_row(cfg: RunConfig, k: int, dev: dict[int, dict[str, float]], best: int | None) -> dict[str, Any]:
    """One row of the loop's final table: pairs, loss, the round's test metrics and its dev metrics."""
    rdir = layout.round_dir(cfg.out, k)
    train = key_numbers(rdir / "train")
    row: dict[str, Any] = {"round": k, "pairs": train.get("pairs", ""), "train_loss": train.get("train_loss", "")}
    if (rdir / "eval" / "metrics.json").is_file():
        flat = read_json(rdir / "eval" / "metrics.json", "metrics").get("flat", {})
        row.update({k_: v for k_, v in flat.items() if isinstance(v, (int, float))})
    if k in dev:
        row.update({f"dev_{m}": v for m, v in dev[k].items()})
    row["best"] = "*" if k == best else ""
    return row


# ---------------------------------------------------------------------------- stage


def check(cfg: RunConfig, from_round: int | None) -> None:
    """Everything that can be checked before the first stage: the config and the input paths."""
    validate(cfg, loop=True)
    if from_round is not None and not 0 <= from_round <= cfg.loop.rounds:
        raise InputError(f"--from-round must be between 0 and loop.rounds={cfg.loop.rounds}, got {from_round}")
    from .models import check_model_path

    check_model_path(cfg.model.path, "model.path")  # a wrong path fails here, before any directory is made
    if cfg.reward.clip_path:
        check_model_path(cfg.reward.clip_path, "reward.clip_path")
    for key, path in (("data.prompts", cfg.data.prompts), ("data.mix_prompts", cfg.data.mix_prompts),
                      ("eval.annotations", cfg.eval.annotations), ("reward.tau_calibration",
                                                                   cfg.reward.tau_calibration)):
        if path and not Path(path).is_file():
            raise InputError(f"{key}: file not found: {path}")


def run(cfg: RunConfig, from_round: int | None = None) -> Path:
    """Run (or resume) the loop in cfg.out; returns the loop directory."""
    check(cfg, from_round)
    out = Path(cfg.out)
    dist = init_group()  # under torchrun: every stage on every rank; rank 0 owns the lock, manifest and summaries
    with output_lock(out, enabled=is_main()):  # a second loop on this out stops here, before any stage
        check_same_config(cfg, from_round)
        if dist is not None:
            dist.barrier()  # rank 0 holds the lock before any rank goes on
        manifest = Manifest(out, cfg, write=is_main())
        manifest.data["distributed"] = {"world_size": world_size(),
                                        "backend": dist.get_backend() if dist is not None else None}
        if is_main():
            if from_round is not None:
                clear_from(out, from_round, manifest)
            save_config(cfg, out / "config.yaml")
        if dist is not None:
            dist.barrier()
        _rounds(cfg, out, manifest, dist)
    return out


def check_same_config(cfg: RunConfig, from_round: int | None) -> None:
    """Refuse to reuse finished stages of cfg.out made under a config that differs from cfg in a setting that
    changes results (anything outside RESUME_SAFE); with overwrite=true nothing is reused, and --from-round K
    redoes rounds K and later (the earlier ones keep the saved config: a warning says so)."""
    out = Path(cfg.out)
    if cfg.overwrite or not any((rdir / stage / DONE_MARKER).exists() for _, rdir in layout.rounds(out)
                                for stage in layout.STAGES):
        return
    changes = changed_settings(out / "config.yaml", cfg, RESUME_SAFE)
    if not changes:
        return
    listed = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    if from_round is None:
        raise ConfigError(f"out: {out} holds finished rounds of another config ({listed}); use another out, "
                          "--from-round K to redo rounds K and later under this config, or overwrite=true")
    log.warning("loop: --from-round %d under a changed config (%s): rounds before %d keep the saved one",
                from_round, listed, from_round)


def _rounds(cfg: RunConfig, out: Path, manifest: Manifest, dist=None) -> None:
    """Round 0's evaluations, then generate -> train -> eval per round, selection, best.json and the table."""
    select = bool(cfg.loop.select_on)
    dev: dict[int, dict[str, float]] = {}
    if cfg.loop.evaluate:
        do_stage(cfg, 0, "eval", manifest, dist)
    if select:
        do_stage(cfg, 0, "dev_eval", manifest, dist)
        dev[0] = dev_metrics(cfg, 0)
    best, last = (0 if select else None), 0
    for k in range(1, cfg.loop.rounds + 1):
        for stage in ("generate", "train"):
            do_stage(cfg, k, stage, manifest, dist)
        if cfg.loop.evaluate:
            do_stage(cfg, k, "eval", manifest, dist)
        last = k
        if select:
            do_stage(cfg, k, "dev_eval", manifest, dist)
            dev[k] = dev_metrics(cfg, k)
            bounds = guard_bounds(dev, cfg.loop.guards, cfg.loop.relative_guards)
            best, since = pick_best(dev, cfg.loop.select_on, bounds)
            manifest.data["rounds"][str(k)] = {**dev[k], "passes_guards": passes_guards(dev[k], bounds),
                                               "best_so_far": best}
            if cfg.loop.patience and since >= cfg.loop.patience and k < cfg.loop.rounds:
                print(f"{label('loop')} stopping after round {k}: {cfg.loop.select_on} has not improved for {since} "
                      f"round(s) (patience {cfg.loop.patience})", flush=True)
                break
    best = best if select else last
    manifest.finish(best)
    if not is_main():
        return
    write_best(cfg, best, dev[best][cfg.loop.select_on] if best in dev else None)
    rows = [round_row(cfg, k, dev, best) for k in range(0 if (cfg.loop.evaluate or select) else 1, last + 1)]
    print(block(text_table(*dict_rows(rows))), flush=True)
    print(f"{label('loop')} best round: {best} -> {out / 'best.json'}", flush=True)
