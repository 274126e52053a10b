"""The vLLM engine (search.engine=vllm): the same sentence search, with vLLM proposing the candidates.

vLLM's own beam search cannot stop at a sentence, so the search stays ours (driver.py, paper.py,
official.py) and vLLM only samples: at every depth each live answer is one request, its prompt the
chat-template token ids with ONE unexpanded image placeholder (vLLM expands it) followed by the answer's
tokens so far, with the image; `n` = search.num_candidates samples that stop at a sentence-end or EOS
token (a "." that needs the next token to tell is settled by one-token look-ahead requests, `_settle`). Prefix caching
makes every depth pay only for what is new (the image is encoded once per
prompt); the raw log-probs of the sampled tokens (vLLM's default `raw_logprobs`: before temperature,
biases and masks) are R_T's, as in the transformers engine. Requests are seeded from the prompt's
seed, the depth and the row (vLLM gives sample i of a request seed + i, so seeds are spaced); greedy
(temperature 0, one sample per request) equals the transformers engine token for token.

Checkpoints: transformers 5 writes a LLaVA's CLIP tower as `vision_tower.<...>`, vLLM reads
`vision_tower.vision_model.<...>`; such a checkpoint is converted once into `<checkpoint>-vllm/` beside it
(`vllm_checkpoint`). On a CPU-only machine the engine runs in this process with
`vllm.cpu_kv_cache_gib` of KV cache and KV blocks of 32 tokens.

    engine = VLLMEngine("runs/x/round_1/train/checkpoint", cfg.search, cfg.vllm, dtype="float32", seed=0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schema import SearchConfig, VLLMConfig
from .boundaries import CLOSE_PENDING, CONFIRM, CONTINUE, NONE, PENDING, SentenceBoundaries
from .engine import Group, PromptItem
from .types import Candidate, TokenCounter

log = logging.getLogger(__name__)

LLAVA_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")


def vllm_key(key: str) -> str:
    """A transformers-5 LLaVA weight name as vLLM reads it: the CLIP tower's keys gain `vision_model.`."""
    for prefix in LLAVA_TOWER_PREFIXES:
        if key.startswith(prefix) and not key[len(prefix):].startswith("vision_model."):
            return prefix + "vision_model." + key[len(prefix):]
    return key


def vllm_checkpoint(path: str) -> str:
    """The checkpoint vLLM should load: `path` itself, or (a local LLaVA-family checkpoint saved by transformers 5)
    its converted copy `<path>-vllm`, written once (atomically) and reused while the source is unchanged."""
    src = Path(path)
    if not (src / "config.json").is_file():
        return path  # a hub id: hub checkpoints use the names vLLM reads
    weights = sorted(src.glob("*.safetensors"))
    if not weights or not _needs_renaming(weights):
        return path
    stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in weights}
    dst = src.with_name(src.name + "-vllm")
    if (dst / "csr_source.json").is_file() and json.loads((dst / "csr_source.json").read_text()) == stamp:
        return str(dst)
    from safetensors import safe_open
    from safetensors.torch import save_file

    log.info("vllm: writing %s with vLLM's weight names (vision_tower.vision_model.*)", dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as fh:
                tensors = {vllm_key(k): fh.get_tensor(k) for k in fh.keys()}
                metadata = fh.metadata() or {"format": "pt"}
            save_file(tensors, str(tmp / f.name), metadata=metadata)
        elif f.name.endswith(".safetensors.index.json"):
            index = json.loads(f.read_text())
            index["weight_map"] = {vllm_key(k): v for k, v in index["weight_map"].items()}
            (tmp / f.name).write_text(json.dumps(index, indent=2))
        elif f.is_file():
            shutil.copy2(f, tmp / f.name)
    (tmp / "csr_source.json").write_text(json.dumps(stamp))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return str(dst)


def _needs_renaming(weights: list[Path]) -> bool:
    from safetensors import safe_open

    with safe_open(str(weights[0]), "pt") as fh:
        keys = list(fh.keys())
    if len(weights) > 1:  # the tower may sit in another shard: read the names from every shard's header
        for f in weights[1:]:
            with safe_open(str(f), "pt") as fh:
                keys += list(fh.keys())
    return any(vllm_key(k) != k for k in keys)


def request_seed(prompt_seed: int, depth: int, row: int | str, n: int) -> int:
    """A request's seed, spaced by n: vLLM draws sample i of a request with seed + i."""
    digest = hashlib.sha256(f"{prompt_seed}:{depth}:{row}".encode()).digest()
    return int.from_bytes(digest[:5], "big") * n


@dataclass
class _Prompt:
    ids: list[int]
    image: Any
    seed: int
    counter: TokenCounter
    depth: int = 0
    seen: bool = False  # its first request was counted (prompt tokens)


@dataclass
class _Batch:
    prompts: list[_Prompt]
    rows: list[tuple[int, list[int]]]  # (prompt index, the answer's tokens so far)
    stats: dict = field(default_factory=dict)


class VLLMEngine:
    """engine.py's Engine on vLLM; the tokenizer, chat template and special ids come from the HF processor."""

    def __init__(self, path: str, search: SearchConfig, vllm: VLLMConfig, dtype: str = "auto", seed: int = 0,
                 trust_remote_code: bool = False):
        from transformers import GenerationConfig

        from ..models.policy import eos_token_ids, suppressed_token_ids
        from ..models.processors import load_processor

        self.search = search
        self.processor = load_processor(path, trust_remote_code=trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        try:
            generation = GenerationConfig.from_pretrained(path)
        except OSError:
            generation = None
        self.eos_ids = eos_token_ids(self.tokenizer, generation)
        self.bounds = SentenceBoundaries.build(self.tokenizer, search.delimiters, self.eos_ids, search.boundary)
        self.llm = _start(vllm_checkpoint(path), vllm, dtype, seed, trust_remote_code)
        model_config = self.llm.llm_engine.model_config
        self.context_length = model_config.max_model_len
        self.suppress_ids = suppressed_token_ids(self.tokenizer, self.eos_ids, model_config.get_vocab_size())
        self.totals = {"engine": "vllm", "requests": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
                       "generated_tokens": 0, "generate_s": 0.0}

    # ------------------------------------------------------------------ what the search asks

    def decode(self, tokens: list[int]) -> str:
        text_ids = [t for t in tokens if t not in self.eos_ids]
        return self.tokenizer.decode(text_ids, skip_special_tokens=True).strip()

    def prompt_tokens(self, image, prompt: str) -> int:
        from ..models.policy import chat_prompt

        batch = self.processor(images=[[image]], text=[chat_prompt(self.processor, prompt)], return_tensors="pt")
        return int(batch["input_ids"].shape[1])

    def check(self, image, prompt: str) -> None:
        """vLLM runs the families it supports its own way; nothing to compare a cache against here."""

    def open(self, items: list[PromptItem]) -> _Batch:
        from ..models.policy import chat_prompt

        prompts = [_Prompt(self.tokenizer(chat_prompt(self.processor, it.prompt)).input_ids, it.image, it.seed,
                           it.counter) for it in items]
        return _Batch(prompts, [(p, []) for p in range(len(prompts))])

    def propose(self, batch: _Batch, groups: list[Group]) -> list[Candidate]:
        """K candidates per row of the groups' prompts, parent-major (one vLLM generate call for all of them)."""
        from vllm import TokensPrompt

        k = self.search.num_candidates
        sampled = k - 1 if self.search.offer_end else k
        requests, params, plan = [], [], []  # plan: (row, "sample" | "end", copies)
        row = 0
        for g in groups:
            prompt = batch.prompts[g.prompt]
            for j in range(g.rows):
                p, answer = batch.rows[row]
                request = TokensPrompt(prompt_token_ids=prompt.ids + answer, multi_modal_data={"image": prompt.image})
                if sampled:
                    greedy = self.search.temperature == 0
                    requests.append(request)
                    params.append(self._sampling(1 if greedy else sampled,
                                                 request_seed(prompt.seed, prompt.depth, j, sampled)))
                    plan.append((row, "sample", sampled if greedy else 1))
                if self.search.offer_end:
                    requests.append(request)
                    params.append(self._end())
                    plan.append((row, "end", 1))
                row += 1
            prompt.depth += 1
        t0 = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        self.totals["generate_s"] += time.perf_counter() - t0
        cands = []
        for (row, _, copies), out in zip(plan, outputs):
            p, _answer = batch.rows[row]
            self._count(batch.prompts[p], out)
            for sample in out.outputs:
                tokens = list(sample.token_ids)
                logprobs = [step[t].logprob for t, step in zip(tokens, sample.logprobs)]
                for _ in range(copies):
                    cands.append(Candidate(parent=row, tokens=list(tokens), logprobs=list(logprobs),
                                           stop=self._stop(tokens)))
        self._settle(batch, cands)
        for c in cands:  # the sentences' own tokens (look-ahead tokens that confirmed an end are not in them)
            batch.prompts[batch.rows[c.parent][0]].counter.generated += len(c.tokens)
        batch.rows = [(batch.rows[c.parent][0], batch.rows[c.parent][1] + c.tokens) for c in cands]
        return cands

    def keep(self, batch: _Batch, rows: list[int]) -> _Batch:
        batch.rows = [batch.rows[r] for r in rows]
        return batch

    def stats(self) -> dict[str, Any]:
        """Engine numbers for stats.json: requests, prefix-cache hit rate, generated tokens per second."""
        t = self.totals
        out = dict(t)
        out["prefix_cache_hit_rate"] = t["cached_prompt_tokens"] / t["prompt_tokens"] if t["prompt_tokens"] else None
        out["generated_tokens_per_s"] = t["generated_tokens"] / t["generate_s"] if t["generate_s"] else None
        try:
            metrics = {m.name: getattr(m, "value", None) for m in self.llm.get_metrics()}
            queries, hits = metrics.get("vllm:prefix_cache_queries"), metrics.get("vllm:prefix_cache_hits")
            if queries:
                out["engine_prefix_cache_hit_rate"] = hits / queries
        except (AssertionError, AttributeError, TypeError):  # stats off or another vLLM version
            pass
        return out

    def close(self) -> None:
        """Shut the engine down and give its memory back (a loop trains in the same process next)."""
        import gc

        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        try:
            if core is not None:
                core.shutdown()
        except Exception as exc:  # noqa: BLE001 - a failed shutdown must not cost the finished search
            log.warning("vllm: engine shutdown failed (%s); its memory is freed with the process", exc)
        self.llm = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ internals

    def _sampling(self, n: int, seed: int, max_tokens: int | None = None):
        from vllm import SamplingParams

        s = self.search
        return SamplingParams(n=n, temperature=s.temperature, top_p=s.top_p, max_tokens=max_tokens or s.max_new_tokens,
                              stop_token_ids=sorted(set(self.bounds.stop_ids) | set(self.eos_ids)), logprobs=0,
                              seed=seed,
                              logit_bias={i: -100.0 for i in self.suppress_ids} or None, ignore_eos=False,
                              skip_special_tokens=False)

    def _end(self):
        """The "end the answer here" candidate: EOS as the only allowed token, with its raw log-prob."""
        from vllm import SamplingParams

        return SamplingParams(n=1, temperature=0.0, max_tokens=1, allowed_token_ids=[self.eos_ids[0]], logprobs=0,
                              skip_special_tokens=False)

    def _stop(self, tokens: list[int]) -> str:
        if tokens and tokens[-1] in self.eos_ids:
            return "eos"
        if tokens and self.bounds.classify(tokens[-1]) != NONE:
            return "delimiter"
        return "max"

    def _settle(self, batch: _Batch, cands: list[Candidate]) -> None:
        """Look one token past every candidate that stopped on a pending end (boundaries.py), as the transformers
        engine does: a confirmed end keeps the sentence, any other token joins it and sampling goes on. One vLLM
        call per round of look-aheads and one per round of continuations; seeded by candidate and round."""
        cap = self.search.max_new_tokens
        pending = {i: self.bounds.pending[c.tokens[-1]] for i, c in enumerate(cands)
                   if c.stop == "delimiter" and c.tokens[-1] in self.bounds.pending and len(c.tokens) < cap}
        round_ = 0
        while pending:
            ahead = self._generate(batch, cands, list(pending), 1, round_)
            waiting, going_on = {}, []
            for i, (tokens, logprobs) in ahead.items():
                cand, tok = cands[i], tokens[0]
                action = self.bounds.look_ahead(pending[i], tok, cand.tokens)
                if action == CONFIRM:
                    continue
                cand.tokens.append(tok)
                cand.logprobs.append(logprobs[0])
                kind = self.bounds.classify(tok) if action == CONTINUE else None
                cand.stop = "max" if kind == NONE else "delimiter"
                if action == CLOSE_PENDING:
                    waiting[i] = pending[i]
                elif kind == PENDING:
                    waiting[i] = self.bounds.pending[tok]
                elif kind == NONE:
                    going_on.append(i)
            going_on = [i for i in going_on if len(cands[i].tokens) < cap]
            for i, (tokens, logprobs) in self._generate(batch, cands, going_on, None, round_).items():
                cands[i].tokens += tokens
                cands[i].logprobs += logprobs
                cands[i].stop = self._stop(cands[i].tokens)
                if cands[i].tokens[-1] in self.bounds.pending and cands[i].stop == "delimiter":
                    waiting[i] = self.bounds.pending[cands[i].tokens[-1]]
            pending = {i: kind for i, kind in waiting.items() if len(cands[i].tokens) < cap}
            round_ += 1

    def _generate(self, batch: _Batch, cands: list[Candidate], which: list[int], max_tokens: int | None,
                  round_: int) -> dict[int, tuple[list[int], list[float]]]:
        """One sample continuing each candidate in `which` (max_tokens None: up to the sentence's token cap)."""
        from vllm import TokensPrompt

        if not which:
            return {}
        requests, params = [], []
        for i in which:
            p, answer = batch.rows[cands[i].parent]
            prompt = batch.prompts[p]
            requests.append(TokensPrompt(prompt_token_ids=prompt.ids + answer + cands[i].tokens,
                                         multi_modal_data={"image": prompt.image}))
            left = self.search.max_new_tokens - len(cands[i].tokens)
            seed = request_seed(prompt.seed, prompt.depth, f"{i}.{round_}.{max_tokens}", 1)
            params.append(self._sampling(1, seed, max_tokens or left))
        t0 = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        self.totals["generate_s"] += time.perf_counter() - t0
        out = {}
        for i, result in zip(which, outputs):
            self._count(batch.prompts[batch.rows[cands[i].parent][0]], result)
            sample = result.outputs[0]
            tokens = list(sample.token_ids)
            out[i] = tokens, [step[t].logprob for t, step in zip(tokens, sample.logprobs)]
        return out

    def _count(self, prompt: _Prompt, out) -> None:
        n_prompt, cached = len(out.prompt_token_ids), out.num_cached_tokens or 0
        generated = sum(len(s.token_ids) for s in out.outputs)
        t = self.totals
        t["requests"] += 1
        t["prompt_tokens"] += n_prompt
        t["cached_prompt_tokens"] += cached
        t["generated_tokens"] += generated
        if not prompt.seen:
            prompt.counter.prompt += n_prompt
            prompt.seen = True
        prompt.counter.forwarded += n_prompt - cached + generated


def _start(model: str, cfg: VLLMConfig, dtype: str, seed: int, trust_remote_code: bool):
    """vllm.LLM with prefix caching, raw log-probs and statistics on; on a CPU-only machine in this process."""
    import torch

    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cfg.cpu_kv_cache_gib:g}")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    if dtype == "auto":  # as model.dtype=auto means for the transformers engine
        dtype = "float32" if cpu else "bfloat16"
    kwargs: dict[str, Any] = dict(
        model=model, dtype=dtype,
        seed=seed, enable_prefix_caching=True, limit_mm_per_prompt={"image": 1}, disable_log_stats=False,
        logprobs_mode="raw_logprobs", generation_config="vllm", tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
        trust_remote_code=trust_remote_code)
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.block_size is not None or cpu:
        kwargs["block_size"] = cfg.block_size or 32
    kwargs.update(cfg.extra)
    return LLM(**kwargs)
