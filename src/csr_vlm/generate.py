"""`csr generate`: calibrated sentence-level search over the prompts -> candidates, preference pairs, stats.

    csr generate --config configs/tiny.yaml [search.mode=official ...]
    torchrun --nproc_per_node 2 -m csr_vlm generate --config configs/tiny.yaml

Setup checks the input paths, reads the prompts and loads the search engine (search.engine: transformers or
vLLM) and the image-text scorer (reward.scorer; a wrong path is a one-line error before any work), and
estimates tau when normalize=center has none: the estimate goes into the reward section the search gets,
stats.json and the saved config.yaml, never into the config passed in. Work: prompt i goes to rank i %
world_size; each rank searches its prompts (search.driver.search_prompts on that engine, seeded per prompt
from cfg.seed, the round and the prompt id) and appends one complete line per prompt to its own shard
`shards/rank-<r>.jsonl`. With search.prompt_batch_size = P > 1 a rank searches its prompts in chunks of P (one
forward per token step for all P prompts' candidate rows, the same candidates as one at a time up to float
rounding) and appends a chunk's lines when the chunk is done. Re-running the same command skips prompts found
in any shard (a half-written last line is dropped first), so a killed run resumes to the output an
uninterrupted run gives. Save (shards.py): rank 0 merges the shards in prompt order into candidates.jsonl,
pairs.jsonl (TRL conversational vision format, docs/formats.md), skipped.jsonl (every unused input with its
reason) and stats.json, then writes DONE. Bad images, empty prompts, malformed lines, duplicate ids, prompts
holding a control token of the model and prompts too long (bounded by their characters before they are
tokenized) are skipped, never fatal; the model's image placeholders are stripped from a prompt
(special_tokens.py). A stage that made no pair at all fails with one line naming the commonest skip (before
loading the models when no prompt is usable), and writes no DONE. The fingerprint holds the prompts files'
sha256, so a run over edited prompts is refused rather than resumed or reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from . import health
from .config import save_config, to_dict
from .console import bar_name, bars_off, commonest_skip
from .curate import shard_line
from .data import (
    append_jsonl,
    file_sha256,
    is_done,
    load_image,
    mark_done,
    read_json,
    read_jsonl,
    read_prompts,
    repair_jsonl,
    write_json,
)
from .distributed import check_shared_out
from .errors import InputError
from .lock import output_lock
from .models import check_model_path
from .schema import RewardConfig, RunConfig
from .sentence_pairs import ChatText
from .shards import RunSummary, check_produced, merge
from .special_tokens import ControlTokens

log = logging.getLogger(__name__)

READS = ("out", "seed", "overwrite", "model", "reward", "search", "vllm", "curate", "data")
"""The config sections (or dotted keys) this stage reads: `csr generate --help` lists only their keys."""
_OWN_GROUP = False  # whether this module started the process group (and so should end it)


def run(cfg: RunConfig, round: int = 1) -> Path:
    """Search every prompt of data.prompts and write the stage directory cfg.out; returns it."""
    out = Path(cfg.out)
    cfg.validate()
    rank, world, dist = _distributed()
    _check_inputs(cfg)
    fingerprint = _fingerprint(cfg, round)
    if not cfg.overwrite and _finished(out, fingerprint):
        log.info("generate: %s is complete (DONE); overwrite=true redoes it", out)
        return out
    with output_lock(out, enabled=rank == 0):  # a second run on this out stops here, before any work
        records, input_skips = _read_all_prompts(cfg)
        if not records:  # the inputs alone show it: no model is loaded
            raise InputError(f"generate: no usable prompt in {cfg.data.prompts} ({commonest_skip(input_skips)})")
        engine, scorer = _load_models(cfg, rank, world)
        if cfg.search.check_cache:
            _check_engine(engine, records, cfg)
        reward, tau_stats = _resolve_reward(cfg, scorer)
        job = Job(dataclasses.replace(cfg, reward=reward), round, engine, scorer, rank, world)  # from here on, one
        if rank == 0:  # config travels: the one the search runs with (its tau estimated), saved as config.yaml
            _prepare_dir(out, job.cfg, fingerprint)
        _barrier(dist)
        check_shared_out(out, dist)  # a node with its own `out` would search into files rank 0 never merges
        started = time.perf_counter()
        try:
            searched = _search_shard(job, records)
            write_json(out / "shards" / f"engine-rank-{rank}.json", engine.stats())
        finally:
            engine.close()
        _barrier(dist)
        if rank == 0:
            summary = RunSummary(round, records, input_skips, tau_stats, time.perf_counter() - started, searched,
                                 world)
            merge(job.cfg, out, summary)
            counts = read_json(out / "stats.json")["counts"]
            if counts["pairs"] and not counts.get("missing"):  # DONE only when every prompt has its line
                mark_done(out, {"round": round})
            log.info("generate: %d prompts -> %s", len(records), out)
        _barrier(dist)
        check_produced(out)  # a stage that made no pair, or lost prompts, ends here, on every rank, without DONE
    if dist is not None and _OWN_GROUP:
        dist.destroy_process_group()  # a later stage (DPO on GPUs) sets up its own backend
    return out


# ---------------------------------------------------------------------------- setup


def _check_inputs(cfg: RunConfig) -> None:
    """The files the stage reads exist (both model paths checked before loading either, so one line says it all)."""
    check_model_path(cfg.model.path, "model.path")
    check_model_path(cfg.reward.clip_path, "reward.clip_path")
    if not cfg.data.prompts:
        raise InputError("data.prompts is not set")
    if cfg.data.mix_prompts and not Path(cfg.data.mix_prompts).is_file():
        raise InputError(f"data.mix_prompts: file not found: {cfg.data.mix_prompts}")
    if cfg.reward.tau_calibration and not Path(cfg.reward.tau_calibration).is_file():
        raise InputError(f"reward.tau_calibration: file not found: {cfg.reward.tau_calibration}")


def _read_all_prompts(cfg: RunConfig):
    """data.prompts (its first data.max_prompts), then data.mix_prompts (its first data.max_mix_prompts);
    (records, skipped inputs)."""
    records, skipped = read_prompts(cfg.data.prompts, cfg.data.image_root, cfg.data.image_prefix)
    if cfg.data.max_prompts is not None:
        records = records[: cfg.data.max_prompts]
    if cfg.data.mix_prompts:
        mix, mix_skipped = read_prompts(cfg.data.mix_prompts, cfg.data.image_root, cfg.data.image_prefix)
        if cfg.data.max_mix_prompts is not None:
            mix = mix[: cfg.data.max_mix_prompts]
        ids = {r.id for r in records}
        skipped += mix_skipped + [{"id": r.id, "reason": "duplicate id (also in data.prompts)"} for r in mix
                                  if r.id in ids]
        records += [r for r in mix if r.id not in ids]
    return records, skipped


def _load_models(cfg: RunConfig, rank: int, world: int):
    """(engine, image-text scorer of reward.scorer) on this rank's devices; both fail before any work."""
    from .scorer import ScorerSpec, build_scorer
    from .search.build import build_engine

    engine, device = build_engine(cfg, int(os.environ.get("LOCAL_RANK", rank)), world)
    scorer = build_scorer(ScorerSpec(cfg.reward.scorer, cfg.reward.clip_path, device, cfg.model.dtype,
                                     cfg.reward.clip_batch_size))
    log.info("generate: scorer %s (%s)", scorer.kind, cfg.reward.clip_path)
    return engine, scorer


def _resolve_reward(cfg: RunConfig, scorer) -> tuple[RewardConfig, dict | None]:
    """The reward section the search runs with: tau estimated from reward.tau_calibration when center needs it."""
    if cfg.reward.normalize != "center" or cfg.reward.tau is not None:
        return cfg.reward, None
    from .calibration import estimate_tau, read_calibration

    calib = read_calibration(cfg.reward.tau_calibration)
    tau, stats = estimate_tau(scorer, calib, cfg.reward.tau_sd, cfg.data.max_image_pixels, cfg.reward.tau_rule)
    log.info("generate: tau = %.3f (%s) estimated from %s", tau, cfg.reward.tau_rule, cfg.reward.tau_calibration)
    if line := health.scorer_line(stats["auc"], cfg.reward.tau_calibration):
        log.warning(line)
    return dataclasses.replace(cfg.reward, tau=tau), stats


def _prepare_dir(out: Path, cfg: RunConfig, fingerprint: dict[str, Any]) -> None:
    """With overwrite, remove the files an earlier run of this stage wrote (and nothing else); then the
    fingerprint and config.yaml."""
    if cfg.overwrite:
        for name in ("candidates.jsonl", "pairs.jsonl", "skipped.jsonl", "stats.json", "DONE"):
            (out / name).unlink(missing_ok=True)
        for pattern in ("rank-*.jsonl", "engine-rank-*.json", "fingerprint.json", "*.tmp"):
            for path in (out / "shards").glob(pattern):
                path.unlink(missing_ok=True)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    write_json(out / "shards" / "fingerprint.json", fingerprint)
    save_config(cfg, out / "config.yaml")


def _finished(out: Path, fingerprint: dict[str, Any]) -> bool:
    """True when out is complete; an InputError when it holds work of another config, round or input file (resuming
    would mix them, and a finished stage would hand on results of the old inputs)."""
    marker = out / "shards" / "fingerprint.json"
    try:
        old = json.loads(marker.read_text()) if marker.exists() else None
    except ValueError:  # cut short by a full disk: the work it describes cannot be trusted either
        raise InputError(f"out: {marker} is unreadable; use overwrite=true or another out") from None
    if old is not None and old != fingerprint:
        if "inputs" not in old:  # written before the inputs were fingerprinted: compare the rest
            old = {**old, "inputs": fingerprint["inputs"]}
        changed = [f"the content of data.{k.removesuffix('_sha256')}" for k, v in fingerprint["inputs"].items()
                   if old["inputs"].get(k) != v]
        changed += ["the config or round"] if {**old, "inputs": None} != {**fingerprint, "inputs": None} else []
        if changed:
            raise InputError(f"out: {out} holds results of a different config, round or input ({' and '.join(changed)}"
                             " changed since); use overwrite=true to redo them, or another out")
    return is_done(out)


def _fingerprint(cfg: RunConfig, round: int) -> dict[str, Any]:
    """Everything that changes a prompt's result, the prompts files' content included: resuming under anything else
    would mix two runs."""
    keep = {"seed": cfg.seed, "round": round, "model": cfg.model.path, **{
        name: to_dict(getattr(cfg, name)) for name in ("reward", "search", "curate", "data")},
        "inputs": {f"{key}_sha256": file_sha256(Path(path)) for key, path in
                   (("prompts", cfg.data.prompts), ("mix_prompts", cfg.data.mix_prompts)) if path}}
    return json.loads(json.dumps(keep))  # the form it has once read back


def _distributed():
    """(rank, world, torch.distributed or None): torchrun sets WORLD_SIZE; gloo serves CPUs and GPUs alike."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    from datetime import timedelta

    import torch.distributed as dist

    global _OWN_GROUP
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
        _OWN_GROUP = True
    return dist.get_rank(), dist.get_world_size(), dist


def _barrier(dist) -> None:
    if dist is not None:
        dist.barrier()


def prompt_seed(seed: int, round: int, prompt_id: str) -> int:
    """A stable per-prompt seed (sha256, not hash(), which changes between processes)."""
    digest = hashlib.sha256(f"{seed}:{round}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


# ---------------------------------------------------------------------------- work


@dataclasses.dataclass(frozen=True)
class Job:
    """What a rank's search needs: the config it runs with (reward resolved: tau estimated), the round, the engine
    and scorer, and which rank of how many this is."""

    cfg: RunConfig
    round: int
    engine: Any
    scorer: Any
    rank: int = 0
    world: int = 1


def _search_shard(job: Job, records: list) -> int:
    """Search this rank's prompts not yet in any shard; append one line per prompt to shards/rank-<r>.jsonl."""
    from tqdm import tqdm

    shards = Path(job.cfg.out) / "shards"
    shard = shards / f"rank-{job.rank}.jsonl"
    repair_jsonl(shard)
    done = {line["id"] for path in sorted(shards.glob("*.jsonl")) for line in read_jsonl(path)}
    mine = [rec for i, rec in enumerate(records) if i % job.world == job.rank and rec.id not in done]
    if done:
        log.info("generate: resuming, %d prompts already done, %d left on rank %d", len(done), len(mine), job.rank)
    pairs, size = 0, job.cfg.search.prompt_batch_size
    # the bar closes however the loop ends (Ctrl-C, SIGTERM), so the CLI's last line is the reason it stopped
    bar = tqdm(total=len(mine), desc=bar_name("generate"), unit="prompt", disable=job.rank != 0 or bars_off())
    with shard.open("a") as fh, bar:
        for start in range(0, len(mine), size):
            for line in _process_chunk(job, mine[start: start + size]):
                append_jsonl(fh, line)
                pairs += line["pair"] is not None
                bar.update(1)
            bar.set_postfix(pairs=pairs)
    return len(mine)


def _check_engine(engine, records, cfg: RunConfig) -> None:
    """engine.check on the first usable prompt (a family the cached search gets wrong stops here, before any work,
    with one line)."""
    tokens = ControlTokens.of(engine.processor)
    for rec in records:
        try:
            rec, image = _usable(engine, tokens, rec, cfg)
        except InputError:
            continue
        engine.check(image, rec.prompt)
        return


def _usable(engine, tokens: ControlTokens, rec, cfg: RunConfig):
    """(the record with its prompt cleaned of the model's image placeholders, its image), once the prompt holds no
    other control token, its length fits (bounded before it is tokenized) and the image opens.

    Raises:
        InputError: the reason the prompt is skipped.
    """
    prompt = rec.prompt
    _check_chars(tokens, prompt, engine.context_length, cfg)
    prompt = tokens.clean_prompt(prompt)
    image = load_image(rec.image, cfg.data.max_image_pixels)
    _check_length(engine, image, prompt, cfg)
    return (rec if prompt == rec.prompt else dataclasses.replace(rec, prompt=prompt)), image


def _process_chunk(job: Job, chunk: list) -> list[dict[str, Any]]:
    """Up to search.prompt_batch_size prompts -> their shard lines {id, candidate, pair, skip, stats}, in order:
    screened (`_screen`), searched (`_search_all`), then curated into pairs (curate.shard_line)."""
    lines, todo = _screen(job, chunk)
    curate = job.cfg.curate
    rendered = curate.pair_level != "response" or curate.pair_tokens == "searched"
    text = ChatText(job.engine.processor) if rendered else None
    for (line, rec, _), result in zip(todo, _search_all(job, todo)):
        if isinstance(result, str):
            line["skip"] = {"id": rec.id, "reason": result}
        else:
            line.update(shard_line(rec, job.round, result, job.cfg.curate, job.cfg.reward, text))
    return lines


def _screen(job: Job, chunk: list) -> tuple[list[dict], list[tuple[dict, Any, Any]]]:
    """(a line per prompt, [(line, record, query)] of the usable ones): a prompt whose image cannot be used or whose
    tokens do not fit the model gets its skip reason in its line."""
    from .search.types import Query

    lines = [{"id": rec.id, "candidate": None, "pair": None, "skip": None, "stats": {}} for rec in chunk]
    todo = []
    tokens = ControlTokens.of(job.engine.processor)
    for line, rec in zip(lines, chunk):
        try:
            rec, image = _usable(job.engine, tokens, rec, job.cfg)
        except InputError as exc:
            line["skip"] = {"id": rec.id, "reason": str(exc), "image": rec.image}
            continue
        seed = prompt_seed(job.cfg.seed, job.round, rec.id)
        todo.append((line, rec, Query(image, rec.prompt, seed, rec.asked_object)))
    return lines, todo


def _search_all(job: Job, todo: list[tuple[dict, Any, Any]]) -> list[Any]:
    """Each usable prompt's search result, or the reason its search failed (a string). The prompts are searched
    together (search.driver.search_prompts); if that batch fails (out of memory included), each is searched
    alone, so one bad prompt only costs its own line."""
    import torch

    from .search.driver import search_prompts

    queries = [query for _, _, query in todo]
    if len(queries) > 1:
        try:
            return search_prompts(job.engine, job.scorer, queries, job.cfg.search, job.cfg.reward)
        except torch.OutOfMemoryError:
            _free_memory()
            log.warning("generate: out of memory searching %d prompts together; searching them one at a time",
                        len(queries))
        except Exception:  # noqa: BLE001 - retried one prompt at a time below
            log.exception("generate: batched search of %d prompts failed; searching them one at a time",
                          len(queries))
    return [_search_one(job, rec.id, query) for _, rec, query in todo]


def _search_one(job: Job, prompt_id: str, query) -> Any:
    """One prompt's search result, or why it failed (out of memory, odd input: it must not stop the run)."""
    import torch

    from .search.driver import search_prompts

    try:
        return search_prompts(job.engine, job.scorer, [query], job.cfg.search, job.cfg.reward)[0]
    except Exception as exc:  # noqa: BLE001 - one prompt must not stop the run
        if isinstance(exc, torch.OutOfMemoryError):
            _free_memory()
            log.warning("generate: out of memory on prompt %s alone; skipped", prompt_id)
        else:
            log.exception("generate: search failed on prompt %s", prompt_id)
        return f"search failed ({type(exc).__name__}: {str(exc)[:200]})"


def _check_chars(tokens: ControlTokens, prompt: str, context: int | None, cfg: RunConfig) -> None:
    """InputError when the prompt's characters alone prove it too long (before any tokenization: a 50 MB line is
    refused in microseconds)."""
    least = tokens.min_tokens(prompt)
    _refuse_if_too_long(least, f"{len(prompt)} characters, at least {least} tokens", context, cfg)


def _check_length(engine, image, prompt: str, cfg: RunConfig) -> None:
    """InputError when image + prompt tokens, plus the longest answer the search may write, exceed the model's
    context, or the prompt alone exceeds data.max_prompt_tokens."""
    n = engine.prompt_tokens(image, prompt)
    _refuse_if_too_long(n, f"{n} tokens with the image", engine.context_length, cfg)


def _refuse_if_too_long(n: int, counted: str, context: int | None, cfg: RunConfig) -> None:
    """InputError when n prompt tokens exceed data.max_prompt_tokens, or n plus the longest answer the search may
    write exceed the model's context; `counted` says how n was counted."""
    answer = cfg.search.max_sentences * cfg.search.max_new_tokens
    if cfg.data.max_prompt_tokens is not None and n > cfg.data.max_prompt_tokens:
        raise InputError(f"prompt too long ({counted} > data.max_prompt_tokens={cfg.data.max_prompt_tokens})")
    if context is not None and n + answer > context:
        raise InputError(f"prompt too long ({counted} + up to {answer} answer tokens > the model's context of "
                         f"{context})")


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
