"""`csr train` (csr_vlm.train.run) step throughput against a plain TRL DPOTrainer on the same pairs and model.

Both train LoRA (same r / alpha / dropout, every nn.Linear of the language model), sigmoid DPO, beta 0.1,
batch 1, one epoch, activation checkpointing off, fp32 on CPU, on the same pairs.jsonl and the same random-weight
llava. pairs/s is the Trainer's own `train_samples_per_second` (one sample = one pair; model loading and saving
are not included; `csr train`'s whole-stage wall time is reported beside it). A third arm is `csr train` with
`train.reference: search` reading each pair's reference log-probs from the pairs (see `with_reference`), so no
reference forward runs; the others use train.reference=model. Every arm trains on the rows csr generate writes
(curate.pair_tokens=searched). Runs alternate ours / ours with the searched reference / plain.

    .venv/bin/python bench/train_bench.py            # LM 4x256, 256 image tokens, 16 pairs, 2 repeats
    .venv/bin/python bench/train_bench.py --quick
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_bench import QUICK, build_models, env_info, make_image, torch, write_result  # noqa: E402

FULL = dict(image_size=128, patch_size=8, text_hidden=256, text_layers=4)  # 256 image tokens
LORA = dict(r=16, alpha=32, dropout=0.0)  # TRL turns dropout off (disable_dropout); csr train would put 0.05 back


def write_pairs(root: Path, n: int, image_size: int) -> Path:
    from csr_vlm.models.tiny import CORPUS

    rng = random.Random(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image = root / "images" / f"{i:03d}.png"
        make_image(image_size, seed=i).save(image)

        def answer():
            return " ".join(rng.sample(CORPUS, rng.randint(1, 3)))

        rows.append({"id": f"p{i}", "images": [str(image)],
                     "prompt": [{"role": "user", "content": [{"type": "image"},
                                                             {"type": "text", "text": "Describe this image."}]}],
                     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": answer()}]}],
                     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": answer()}]}],
                     "chosen_reward": 1.0, "rejected_reward": 0.0, "margin": 1.0, "round": 1})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_ours(root: Path, pairs: Path, out: Path, reference: str = "model") -> dict:
    """csr train on the pairs; reference: train.reference (model: TRL's reference pass; search: the pairs')."""
    from csr_vlm import train
    from csr_vlm.config import load_config

    cfg = load_config(None, [f"model.path={root / 'policy'}", f"out={out}", f"train.pairs={pairs}",
                             f"train.lora_r={LORA['r']}", f"train.lora_alpha={LORA['alpha']}",
                             f"train.lora_dropout={LORA['dropout']}", "train.learning_rate=1e-5",
                             f"train.reference={reference}"])
    t0 = time.perf_counter()
    train.run(cfg)
    wall = time.perf_counter() - t0
    logs = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    final = next(r for r in reversed(logs) if "train_samples_per_second" in r)
    done = json.loads((out / "DONE").read_text())
    return {"pairs_per_s": final["train_samples_per_second"], "train_runtime_s": final["train_runtime"],
            "stage_wall_s": wall, "steps": done["steps"], "reference": done.get("reference"),
            "losses": [r["loss"] for r in logs if "loss" in r]}


def with_reference(root: Path, pairs: Path) -> Path:
    """The pairs as csr generate writes them (curate.pair_tokens=searched): each side is token ids (the answer's
    words, then EOS) written as text after the prompt the search encodes, with `ref_tokens` and reference
    log-probs. The bench runs no search, so the values are TRL's own reference of those rows (computed here
    once); `csr train` checks every row's tokens against TRL's as it checks a search's."""
    from transformers import AutoProcessor

    from csr_vlm import search_reference, train
    from csr_vlm.config import load_config
    from csr_vlm.curate import message_text
    from csr_vlm.sentence_pairs import ChatText

    processor = AutoProcessor.from_pretrained(root / "policy")
    tok, text = processor.tokenizer, ChatText(processor)
    rows = []
    for row in map(json.loads, pairs.read_text().splitlines()):
        ids = [tok(" " + message_text(row[side]), add_special_tokens=False).input_ids + [tok.eos_token_id]
               for side in ("chosen", "rejected")]
        rows.append(text.searched({**row, **search_reference.reference_fields([], (ids[0], 0.0), (ids[1], 0.0))}))
    out = pairs.with_name("pairs_searched.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"model.path={root / 'policy'}", f"out={root / 'ref'}", f"train.pairs={out}",
                             f"train.lora_r={LORA['r']}", f"train.lora_alpha={LORA['alpha']}"])
    dataset, _ = train.load_pairs(out)
    trainer = train.build_trainer(cfg, train.load_model(cfg), dataset, root / "ref.jsonl")
    for row, (c, r) in zip(rows, search_reference._trl_reference(trainer, list(range(len(dataset))))):
        row["chosen_ref_logp"], row["rejected_ref_logp"] = c, r
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def run_plain(root: Path, pairs: Path, out: Path) -> dict:
    """What a TRL user writes: load model + processor, a vision DPO dataset, DPOTrainer with a LoraConfig."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    rows = [{k: r[k] for k in ("images", "prompt", "chosen", "rejected")}
            for r in map(json.loads, pairs.read_text().splitlines())]
    ds = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image(mode="RGB")))
    processor = AutoProcessor.from_pretrained(root / "policy")
    model = AutoModelForImageTextToText.from_pretrained(root / "policy", dtype=torch.float32)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=1, num_train_epochs=1, learning_rate=1e-5,
                     lr_scheduler_type="cosine", warmup_steps=0.03, beta=0.1, bf16=False, use_cpu=True,
                     activation_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
                     remove_unused_columns=False, seed=0)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], task_type="CAUSAL_LM",
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor, peft_config=lora)
    metrics = trainer.train().metrics
    return {"pairs_per_s": metrics["train_samples_per_second"], "train_runtime_s": metrics["train_runtime"],
            "steps": trainer.state.global_step,
            "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 4 pairs, 1 repeat")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per run (default 16, quick 4)")
    ap.add_argument("--repeats", type=int, default=None, help="alternating runs of each (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/train_bench.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    geometry = QUICK if args.quick else FULL
    n = args.pairs or (4 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 2)
    ours, plain, searched = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = build_models(Path(tmp), geometry)
        pairs = write_pairs(Path(tmp), n, geometry["image_size"])
        pairs = with_reference(root, pairs)  # every arm trains on the rows csr generate would write
        for i in range(repeats):
            ours.append(run_ours(root, pairs, Path(tmp) / f"ours{i}"))
            searched.append(run_ours(root, pairs, Path(tmp) / f"searched{i}", reference="search"))
            if searched[-1]["reference"]["from_search"] != n:
                raise SystemExit(f"train bench: not every pair's searched reference was exact: {searched[-1]}")
            plain.append(run_plain(root, pairs, Path(tmp) / f"plain{i}"))
    med = statistics.median
    result = {"geometry": geometry, "pairs": n, "repeats": repeats, "lora": LORA,
              "pairs_per_s": {"ours": med(r["pairs_per_s"] for r in ours),
                              "ours_searched_reference": med(r["pairs_per_s"] for r in searched),
                              "plain_trl": med(r["pairs_per_s"] for r in plain)},
              "ours_stage_wall_s": med(r["stage_wall_s"] for r in ours),
              "runs": {"ours": ours, "ours_searched_reference": searched, "plain_trl": plain}, "env": env_info(),
              "command": "python bench/train_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    result["ratio"] = result["pairs_per_s"]["ours"] / result["pairs_per_s"]["plain_trl"]
    result["ratio_searched_reference"] = result["pairs_per_s"]["ours_searched_reference"] / \
        result["pairs_per_s"]["plain_trl"]
    print(f"train bench: {n} pairs, LM {geometry['text_layers']}x{geometry['text_hidden']}, "
          f"{(geometry['image_size'] // geometry['patch_size']) ** 2} image tokens, LoRA r={LORA['r']}, "
          f"median of {repeats}")
    print(f"| {'':<22} | {'csr train':>10} | {'plain TRL':>10} | {'ratio':>16} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 12}|{'-' * 18}|")
    print(f"| {'pairs/s (train loop)':<22} | {result['pairs_per_s']['ours']:>10.2f} | "
          f"{result['pairs_per_s']['plain_trl']:>10.2f} | {result['ratio']:>5.2f} (>= 1.0) |")
    print(f"| {'pairs/s, searched ref.':<22} | {result['pairs_per_s']['ours_searched_reference']:>10.2f} | "
          f"{result['pairs_per_s']['plain_trl']:>10.2f} | {result['ratio_searched_reference']:>5.2f} (>= 1.3) |")
    print(f"csr train whole stage (load, train, merge, save): {result['ours_stage_wall_s']:.1f} s")
    write_result("train_bench", result, args.out)
    return result


if __name__ == "__main__":
    main()
