"""The save of `csr generate`: the ranks' shards merged, in prompt order, into the stage's files and stats.json.

candidates.jsonl, pairs.jsonl (curate.balance_yes_no applied), skipped.jsonl (the inputs' skips and the
prompts' own) and stats.json (counts, tokens, time per search phase, the engines' numbers); formats in
docs/formats.md. `check_produced` ends a stage that produced no pair with one line naming the commonest skip.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .console import commonest_skip, reason_kind, skip_summary
from .curate import balance_yes_no
from .data import read_json, read_jsonl, write_json, write_jsonl
from .distributed import SHARED_OUT
from .errors import InputError
from .schema import RunConfig
from .yes_no import YES_NO

log = logging.getLogger(__name__)


def check_produced(out: Path) -> None:
    """InputError when a prompt has no line in any shard (the stage is then not done), or when the merged stage holds
    no pair: one line with the commonest skip reason and its count."""
    stats = read_json(out / "stats.json", "stats.json")
    missing = stats["counts"].get("missing", 0)
    if missing:
        raise InputError(f"generate: {missing} of {stats['counts']['prompts_valid']} prompts are in no shard of "
                         f"{out / 'shards'} and not in skipped.jsonl (first: {stats['first_missing']}); the stage is "
                         f"not done. Re-run the same command to search them; on several nodes, {SHARED_OUT}")
    if stats["counts"]["pairs"]:
        return
    skipped = list(read_jsonl(out / "skipped.jsonl"))
    raise InputError(f"generate: no pairs from {stats['counts']['inputs']} input(s) ({commonest_skip(skipped)}; "
                     f"every reason in {out / 'skipped.jsonl'})")


@dataclass(frozen=True)
class RunSummary:
    """What the merge reports beside the shards' lines: the round, the prompts read and the inputs' skips, tau's
    estimate (None when given), the search's wall time, the prompts this run searched and on how many ranks."""

    round: int
    records: list
    input_skips: list[dict]
    tau_stats: dict | None
    wall: float
    searched: int
    world: int


def merge(cfg: RunConfig, out: Path, run: RunSummary) -> None:
    """Shards -> candidates/pairs/skipped in prompt order, plus stats.json (cfg: the config the search ran with)."""
    records, input_skips = run.records, run.input_skips
    lines: dict[str, dict] = {}
    for path in sorted((out / "shards").glob("*.jsonl")):
        for line in read_jsonl(path):
            lines.setdefault(line["id"], line)
    ordered = [lines[r.id] for r in records if r.id in lines]
    missing = [r.id for r in records if r.id not in lines]
    skipped = list(input_skips) + [ln["skip"] for ln in ordered if ln["skip"]]
    pairs = [p for ln in ordered for p in ([ln["pair"]] if ln["pair"] else []) + ln.get("sentence_pairs", [])]
    if cfg.curate.balance_yes_no:
        pairs, dropped = balance_yes_no(pairs, {r.id for r in records if r.task == YES_NO})
        skipped += dropped
    write_jsonl(out / "candidates.jsonl", [ln["candidate"] for ln in ordered if ln["candidate"]])
    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "skipped.jsonl", skipped)
    summary = skip_summary("generate", skipped, len(records) + len(input_skips), out / "skipped.jsonl")
    if summary:
        log.warning(summary)
    stats = _stats(cfg, run, ordered, skipped, pairs, _engine_stats(out))
    stats["counts"]["missing"], stats["first_missing"] = len(missing), (missing or [None])[0]
    write_json(out / "stats.json", stats)


def _engine_stats(out: Path) -> dict:
    """The engines' own numbers of this run, summed over ranks (rates recomputed from the sums)."""
    total: dict = {}
    for path in sorted((out / "shards").glob("engine-rank-*.json")):
        for key, value in read_json(path).items():
            total[key] = total.get(key, 0) + value if isinstance(value, (int, float)) and key in total else value
    if total.get("prompt_tokens"):
        total["prefix_cache_hit_rate"] = total["cached_prompt_tokens"] / total["prompt_tokens"]
    if total.get("generate_s"):
        total["generated_tokens_per_s"] = total["generated_tokens"] / total["generate_s"]
    return total


def _stats(cfg: RunConfig, run: RunSummary, ordered: list[dict], skipped: list[dict], pairs: list[dict],
           engine_stats: dict) -> dict:
    n_valid, input_skips, wall, searched = len(run.records), run.input_skips, run.wall, run.searched
    tokens, times, events = Counter(), Counter(), Counter()
    for ln in ordered:
        st = ln["stats"]
        for key in ("tokens_forwarded", "tokens_minimal", "tokens_prompt", "tokens_generated"):
            tokens[key] += st.get(key, 0)
        times.update(st.get("time", {}))
        events.update(st.get("events", {}))
    by_reason = Counter(reason_kind(s["reason"]) for s in skipped)
    margins = [p["margin"] for p in pairs if p["margin"] is not None and not p.get("anchor")
               and p.get("level") != "sentence"]
    sentence_margins = [p["margin"] for p in pairs if p.get("level") == "sentence"]
    return {
        "round": run.round, "mode": cfg.search.mode, "world_size": run.world,
        "tau": cfg.reward.tau, "tau_calibration": run.tau_stats,
        "counts": {"inputs": n_valid + len(input_skips), "prompts_valid": n_valid,
                   "prompts_searched": sum(ln["candidate"] is not None for ln in ordered), "pairs": len(pairs),
                   "sentence_pairs": len(sentence_margins), "anchors": sum(bool(p.get("anchor")) for p in pairs),
                   "skipped": len(skipped)},
        "skipped_by_reason": dict(by_reason),
        "tokens": {"forwarded": tokens["tokens_forwarded"], "minimal": tokens["tokens_minimal"],
                   "prompt": tokens["tokens_prompt"], "generated": tokens["tokens_generated"],
                   "forwarded_over_minimal": tokens["tokens_forwarded"] / max(tokens["tokens_minimal"], 1)},
        "time_s": {k: round_(v) for k, v in times.items()},
        "search_events": dict(events),
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "mean_sentence_margin": sum(sentence_margins) / len(sentence_margins) if sentence_margins else None,
        "wall_s": round_(wall), "prompts_this_run": searched,
        "prompts_per_s": round_(searched / wall) if wall > 0 else None,
        "engine": engine_stats,
    }


def round_(x: float) -> float:
    return float(f"{x:.4f}")
