"""LLaVA-1.5-7B and Qwen2.5-VL-7B geometry with random weights on one GPU: search cost, one DPO step, hours a round.

Nothing is downloaded. Each model is built from its config directly on the device (`torch.device` as the
default device, bfloat16), with the tokenizer and image processor of `csr_vlm.models.tiny` (LLaVA: 336 px,
patch 14, 576 image tokens; Qwen2.5-VL: 448 x 448 pixels, 256 merged image tokens); the vocabulary keeps the
real size (32,064 / 152,064 rows) and ids past the small tokenizer are suppressed. CLIP is ViT-L/14-336's
geometry, random too. Measured per model, on search_bench's ragged tree (RAGGED: a sentence ends at 1 token id
in 12, at most 40 tokens, 5 candidates, keep 1 + 2, 6 sentences):

- the transformers engine (ours, search.mode=paper) and the official cost structure (search_bench.run_baseline:
  one `generate` per tree node on the re-encoded prefix, CLIP per sentence): s per prompt, generated tokens/s,
  peak GPU memory;
- the vLLM engine (`search.engine=vllm`, `load_format=dummy`: random weights from the config), when vllm is
  importable; its own sentence ends (the delimiters), so compare its tokens/s, not its s per prompt;
- one DPO optimizer step (TRL DPOTrainer, LoRA r 128 / alpha 256 on every linear layer of the language model,
  batch 1, bf16): pairs/s;

and prints the projected hours of one round of the paper's 12,856 prompts (one search and one pair each) on
one GPU and on 8 (data parallel: each GPU searches and trains on 1/8 of the prompts and pairs).

    python bench/gpu_bench.py                 # on a GPU: both models, 2 seeds each (about 10 minutes, estimated)
    python bench/gpu_bench.py --quick         # on the CPU: tiny geometry, 2 sentences, 1 seed (CPU tests)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_bench import (  # noqa: E402
    RAGGED,
    env_info,
    make_cfg,
    make_image,
    ragged_ends,
    run_baseline,
    run_ours,
    torch,
    write_result,
)
from train_bench import write_pairs  # noqa: E402

ROUND_PROMPTS = 12856
"""Prompts of one round in the paper (LLaVA-1.5's detail-description subset), one pair each."""
GPUS = (1, 8)
LORA = dict(r=128, alpha=256)
LLAVA_7B = dict(image_size=336, patch_size=14, vision=dict(hidden_size=1024, num_hidden_layers=24,
                num_attention_heads=16, intermediate_size=4096, projection_dim=768),
                text=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                          intermediate_size=11008, max_position_embeddings=4096, rms_norm_eps=1e-5), vocab=32064)
QWEN25_VL_7B = dict(pixels=448 * 448, vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    fullatt_block_indexes=[7, 15, 23, 31]),
                    text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                              intermediate_size=18944, max_position_embeddings=32768, rms_norm_eps=1e-6,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                               "mrope_section": [16, 24, 24]}), vocab=152064)
CLIP_L336 = dict(image_size=336, patch_size=14, hidden=1024, layers=24, projection_dim=768)
QUICK = {"llava": dict(image_size=64, patch_size=8, vision=dict(hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128, projection_dim=64),
                       text=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=256, max_position_embeddings=2048, rms_norm_eps=1e-5), vocab=None),
         "qwen2_5_vl": dict(pixels=112 * 112, vision=dict(depth=2, hidden_size=64, intermediate_size=128,
                            num_heads=2, fullatt_block_indexes=[1]),
                            text=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=256, max_position_embeddings=2048,
                                      rms_norm_eps=1e-6, rope_parameters={"rope_type": "default",
                                                                          "rope_theta": 1000000.0,
                                                                          "mrope_section": [4, 6, 6]}), vocab=None)}
"""Tiny geometry for --quick: head_dim 32 (vLLM's CPU attention has no kernel for 16)."""
QUICK_CLIP = dict(image_size=64, patch_size=8, hidden=64, layers=2, projection_dim=32)


# ---------------------------------------------------------------------------- models


def build_llava_7b(g: dict, device, dtype):
    """LLaVA-1.5's layout at geometry g (LLAVA_7B, or QUICK's) with random weights, built on `device`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from csr_vlm.models.tiny import build_llava

    _, proc = build_llava(image_size=g["image_size"], patch_size=g["patch_size"], text_hidden=16, text_layers=1,
                          vision_hidden=16, vision_layers=1)
    tok = proc.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=g["image_size"], patch_size=g["patch_size"], **g["vision"]),
        text_config=LlamaConfig(vocab_size=g["vocab"] or len(tok), **g["text"], bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(g["image_size"] // g["patch_size"]) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2, pad_token_id=tok.pad_token_id)
    return _on_device(LlavaForConditionalGeneration, config, device, dtype), proc


def build_qwen25_vl_7b(g: dict, device, dtype):
    """Qwen2.5-VL's layout at geometry g (QWEN25_VL_7B, or QUICK's) with random weights, built on `device`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from csr_vlm.models.tiny import qwen

    _, proc = qwen.build_qwen2_5_vl()
    tok = proc.tokenizer
    ids = tok.convert_tokens_to_ids
    proc.image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                                    min_pixels=g["pixels"], max_pixels=g["pixels"])
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=g["vocab"] or len(tok), **g["text"], bos_token_id=ids("<|endoftext|>"),
                         eos_token_id=ids("<|im_end|>"), pad_token_id=tok.pad_token_id),
        vision_config=dict(**g["vision"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, out_hidden_size=g["text"]["hidden_size"]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    return _on_device(Qwen2_5_VLForConditionalGeneration, config, device, dtype), proc


def _on_device(cls, config, device, dtype):
    """cls(config) with its parameters allocated and initialized on `device` in `dtype` (no CPU copy)."""
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    return model.eval()


def make_policy(model, proc):
    """The project's Policy around an in-memory model; sentences end only at the ragged tree's ids, and ids past
    the small tokenizer are never sampled (search_bench.load_models, for a model built here)."""
    from csr_vlm.models import sentence_end_ids
    from csr_vlm.models.policy import Policy
    from csr_vlm.models.tiny.common import set_generation_ids

    tok = proc.tokenizer
    set_generation_ids(model, tok)
    policy = Policy(model=model, processor=proc, path="random-weights")
    forced = set(type(policy).suppressed_ids(policy)) | set(policy.eos_ids) \
        | set(sentence_end_ids(tok, [".", "!", "?", "\n"]))
    forced -= set(ragged_ends(policy))
    vocab = model.config.get_text_config().vocab_size
    forced = sorted(forced | set(range(len(tok), vocab)))
    policy.suppressed_ids = lambda: forced
    return policy


def make_scorer(root: Path, g: dict, device: str, dtype: str):
    """A random CLIP of geometry g saved to root/clip and loaded as the search's scorer."""
    from csr_vlm.models import ClipScorer
    from csr_vlm.models.tiny import build_clip

    clip, proc = build_clip(**g)
    clip.save_pretrained(root / "clip")
    proc.save_pretrained(root / "clip")
    del clip
    return ClipScorer(str(root / "clip"), device=device, dtype=dtype)


# ---------------------------------------------------------------------------- measures


@contextlib.contextmanager
def gpu_peak(box: dict, key: str):
    """box[key] = peak GPU memory (GiB) inside the block; None on the CPU."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield
    if cuda:
        torch.cuda.synchronize()
    box[key] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def search_costs(policy, scorer, image, seeds: int, sentences: int) -> dict:
    """Ours and the official cost structure on the ragged tree: median s per prompt, tokens/s, peak GPU GiB."""
    cfg = make_cfg(sentences=sentences, tokens=RAGGED["max_new_tokens"])
    ends = ragged_ends(policy)
    run_ours(policy, scorer, image, cfg, seed=1000, ends=ends)  # warm-up: kernels, allocator
    out, peaks = {"ours": [], "official": []}, {}
    for i in range(seeds):
        with gpu_peak(peaks, "ours"):
            out["ours"].append(run_ours(policy, scorer, image, cfg, seed=i, ends=ends))
        with gpu_peak(peaks, "official"):
            out["official"].append(run_baseline(policy, scorer, image, cfg, seed=i, ends=ends))
    return {kind: _rate(runs, peaks[kind]) for kind, runs in out.items()}


def _rate(runs: list[dict], peak) -> dict:
    med = statistics.median
    return {"s_per_prompt": med(r["wall_s"] for r in runs),
            "tokens_per_s": med(r["tokens_generated"] / r["wall_s"] for r in runs),
            "tokens_per_prompt": med(r["tokens_generated"] for r in runs), "peak_gpu_gib": peak, "runs": len(runs)}


def vllm_costs(model, proc, scorer, root: Path, image, seeds: int) -> dict:
    """The vLLM engine on the same search settings with dummy (random) weights; skipped when vllm is missing."""
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm is not importable in this environment"}
    from csr_vlm.config import load_config
    from csr_vlm.search.driver import search_prompt
    from csr_vlm.search.vllm_engine import VLLMEngine

    path = root / "vllm-policy"  # config, tokenizer, processor; no weights (load_format=dummy)
    model.config.architectures = [type(model).__name__]  # vLLM picks its model class (and runner) from it
    model.config.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    proc.save_pretrained(path)
    cfg = make_cfg(tokens=RAGGED["max_new_tokens"])
    cuda = torch.cuda.is_available()
    vcfg = load_config(None, ["vllm.gpu_memory_utilization=0.5", "vllm.extra={load_format: dummy}",
                              f"vllm.enforce_eager={str(not cuda).lower()}"]).vllm
    from search_bench import PROMPT

    try:
        engine = VLLMEngine(str(path), cfg.search, vcfg, dtype="bfloat16" if cuda else "float32", seed=0)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal: the other numbers still stand
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    runs = []
    try:
        search_prompt(engine, scorer, image, PROMPT, cfg.search, cfg.reward, 1000)  # warm-up
        for i in range(seeds):
            t0 = time.perf_counter()
            result = search_prompt(engine, scorer, image, PROMPT, cfg.search, cfg.reward, i)
            runs.append({"wall_s": time.perf_counter() - t0, "tokens_generated": result.stats["tokens_generated"]})
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        engine.close()
    return {**_rate(runs, None), "note": "vLLM reserves its own pool (gpu_memory_utilization 0.5): no peak"}


def dpo_step(model, proc, root: Path, image_size: int, steps: int, cuda: bool) -> dict:
    """`steps` optimizer steps of TRL's DPOTrainer, LoRA r 128 on the language model, batch 1: pairs/s, peak GiB."""
    import datasets
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    pairs = write_pairs(root / "pairs", steps + 1, image_size)
    rows = [{k: r[k] for k in ("images", "prompt", "chosen", "rejected")}
            for r in map(__import__("json").loads, pairs.read_text().splitlines())]
    ds = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image(mode="RGB")))
    args = DPOConfig(output_dir=str(root / "dpo"), per_device_train_batch_size=1, max_steps=steps + 1,
                     learning_rate=1e-6, beta=0.1, bf16=cuda, use_cpu=not cuda, logging_steps=1, save_strategy="no",
                     report_to="none", remove_unused_columns=False, seed=0, activation_checkpointing=cuda)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    model.train()
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=proc, peft_config=lora)
    times: list[float] = []
    trainer.add_callback(step_timer(times))
    box: dict = {}
    with gpu_peak(box, "peak"):
        trainer.train()
    steady = times[1:] or times  # the first step pays the kernels' first launch
    return {"pairs_per_s": len(steady) / sum(steady), "steps_timed": len(steady), "lora": LORA,
            "peak_gpu_gib": box["peak"]}


def step_timer(times: list[float]):
    """A TrainerCallback that appends each optimizer step's wall time (GPU synchronized) to `times`."""
    from transformers import TrainerCallback

    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.t0 = now()

        def on_step_end(self, *args, **kwargs):
            times.append(now() - self.t0)

    return StepTimer()


def round_hours(search: dict, pairs_per_s: float) -> dict:
    """Hours of one round (ROUND_PROMPTS searches + as many DPO pairs) per engine, on 1 and 8 GPUs (data parallel).

    hours = (prompts * s_per_prompt + pairs / pairs_per_s) / gpus / 3600."""
    out = {}
    for kind, s in search.items():
        if "s_per_prompt" not in s:
            continue
        seconds = ROUND_PROMPTS * s["s_per_prompt"] + ROUND_PROMPTS / pairs_per_s
        out[kind] = {f"{g}_gpu": seconds / g / 3600 for g in GPUS}
    return out


# ---------------------------------------------------------------------------- main


def bench_family(family: str, quick: bool, root: Path, seeds: int, dpo_steps: int, vllm: bool) -> dict:
    cuda = torch.cuda.is_available() and not quick
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    geometry = QUICK[family] if quick else {"llava": LLAVA_7B, "qwen2_5_vl": QWEN25_VL_7B}[family]
    build = build_llava_7b if family == "llava" else build_qwen25_vl_7b
    t0 = time.perf_counter()
    model, proc = build(geometry, device, dtype)
    built_s = time.perf_counter() - t0
    policy = make_policy(model, proc)
    scorer = make_scorer(root, QUICK_CLIP if quick else CLIP_L336, device, "bfloat16" if cuda else "float32")
    image = make_image(geometry.get("image_size") or int(geometry["pixels"] ** 0.5))
    search = search_costs(policy, scorer, image, seeds, sentences=2 if quick else 6)
    if vllm:
        search["vllm"] = vllm_costs(model, proc, scorer, root, image, seeds)
    del scorer
    dpo = dpo_step(model, proc, root, image.size[0], dpo_steps, cuda)
    params = sum(p.numel() for p in model.parameters() if not getattr(p, "is_meta", False))
    return {"family": family, "parameters_b": params / 1e9, "build_s": built_s, "search": search, "dpo": dpo,
            "round_hours": round_hours(search, dpo["pairs_per_s"])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU, tiny geometry, 1 seed, 1 DPO step")
    ap.add_argument("--families", default="llava,qwen2_5_vl", help="comma-separated: llava, qwen2_5_vl")
    ap.add_argument("--seeds", type=int, default=None, help="searches per engine (default 2, quick 1)")
    ap.add_argument("--dpo-steps", type=int, default=None,
                    help="timed DPO steps after one warm-up (default 3, quick 1)")
    ap.add_argument("--vllm", action="store_true", help="with --quick: also the vLLM row (on the CPU; needs vllm)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/gpu_bench.json)")
    args = ap.parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device; --quick runs the same code on the CPU with tiny geometry")
    if args.quick:
        torch.set_num_threads(1)
    seeds, steps = args.seeds or (1 if args.quick else 2), args.dpo_steps or (1 if args.quick else 3)
    results = []
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(bench_family(family, args.quick, Path(tmp), seeds, steps, args.vllm or not args.quick))
        gc.collect()  # the trainer's reference cycles hold the model until collected
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.quick else "cpu"
    result = {"device": device, "quick": args.quick, "round_prompts": ROUND_PROMPTS, "ragged": RAGGED,
              "models": results, "env": env_info(),
              "command": "python bench/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print_table(result)
    write_result("gpu_bench", result, args.out)
    return result


def print_table(r: dict) -> None:
    print(f"gpu bench on {r['device']}: ragged tree (1 id in {r['ragged']['end_every']} ends a sentence, cap "
          f"{r['ragged']['max_new_tokens']}); one round = {r['round_prompts']} prompts + as many DPO pairs")
    print(f"| {'model':<11} | {'engine':<9} | {'s/prompt':>9} | {'tok/s':>8} | {'peak GiB':>8} | {'h, 1 GPU':>9} | "
          f"{'h, 8 GPUs':>9} |")
    print("|" + "|".join("-" * w for w in (13, 11, 11, 10, 10, 11, 11)) + "|")
    for m in r["models"]:
        for kind, s in m["search"].items():
            if "s_per_prompt" not in s:
                print(f"| {m['family']:<11} | {kind:<9} | {s.get('skipped') or s.get('error', '')[:60]} |")
                continue
            h = m["round_hours"][kind]
            peak = "-" if s["peak_gpu_gib"] is None else f"{s['peak_gpu_gib']:.1f}"
            print(f"| {m['family']:<11} | {kind:<9} | {s['s_per_prompt']:>9.3f} | {s['tokens_per_s']:>8.0f} | "
                  f"{peak:>8} | {h['1_gpu']:>9.2f} | {h['8_gpu']:>9.2f} |")
        d = m["dpo"]
        peak = "-" if d["peak_gpu_gib"] is None else f"{d['peak_gpu_gib']:.1f}"
        print(f"| {m['family']:<11} | DPO r{d['lora']['r']:<4} | {d['pairs_per_s']:>7.2f}/s pairs | peak {peak} GiB |")


if __name__ == "__main__":
    main()
