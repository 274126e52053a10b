"""csr train: DPO + LoRA on the tiny LLaVA (TRL unpatched), merged checkpoint, resume (2 ranks: test_scaling.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN as TINY
from helpers import write_pairs

from csr_vlm import train
from csr_vlm.cli import main
from csr_vlm.config import load_config
from csr_vlm.errors import InputError


def make_cfg(tiny, tmp_path, *extra, pairs=None):
    pairs = pairs or write_pairs(tmp_path / "pairs.jsonl", tiny / "images")
    return load_config(None, [f"model.path={tiny / 'policy'}", f"out={tmp_path / 'train'}", f"train.pairs={pairs}",
                              *TINY, *extra])


def test_trl_args_paper_defaults_and_passthrough(tiny_llava, tmp_path):
    cfg = load_config(None, [f"out={tmp_path}", "train.loss_type=[sigmoid,sft]", "train.loss_weights=[1.0,0.5]",
                             "train.trl_args={max_steps: 7}"])
    args, lora = train.to_trl_args(cfg)
    assert (args.beta, args.learning_rate, args.lr_scheduler_type.value) == (0.1, 1e-7, "cosine")
    assert (args.warmup_steps, args.num_train_epochs, args.per_device_train_batch_size) == (0.03, 1.0, 1)
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.5] and args.max_steps == 7
    assert args.bf16 is False and args.use_cpu is True  # CPU box: bf16 None -> off
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (128, 256, 0.05)
    bad = load_config(None, [f"out={tmp_path}", "train.trl_args={no_such_arg: 1}"])
    with pytest.raises(InputError, match="train.trl_args"):
        train.to_trl_args(bad)


def test_lora_targets_are_exactly_the_language_model_linears(tiny_family):
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_family / "policy")
    lm = train.language_model_prefix(model) + "."
    want = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(lm)}
    _, lora = train.to_trl_args(load_config(None, []), model)
    peft_model = get_peft_model(model, lora)
    got = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert got == want and len(want) == 14  # 2 decoder layers x (q, k, v, o, gate, up, down)


def test_two_dpo_steps_move_lora_only_and_keep_the_reference(tiny_llava, tmp_path):
    torch.set_num_threads(1)
    cfg = make_cfg(tiny_llava, tmp_path, "train.trl_args={max_steps: 2}")
    dataset, skipped = train.load_pairs(train.pairs_path(cfg))
    policy = train.load_model(cfg)
    metrics = tmp_path / "m.jsonl"
    trainer = train.build_trainer(cfg, policy, dataset, metrics)
    model = trainer.model
    batch = policy.encode([dataset[0]["images"][0]], ["describe it."])
    with torch.no_grad(), model.disable_adapter():
        ref_before = model(**batch).logits
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    for name, p in model.named_parameters():
        if "lora_B" in name:  # lora_B starts at zero; two Adam steps at lr 1e-3 must move it
            assert not torch.equal(p, before[name]), name
        elif "lora_" not in name:
            assert torch.equal(p, before[name]), name
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(**batch).logits, ref_before)  # reference = adapter disabled = start weights
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert steps[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # step 1: policy == reference, -log sigmoid(0)


def test_run_merges_skips_missing_images_and_resumes(tiny_llava, tmp_path):
    from transformers import AutoModelForImageTextToText

    from csr_vlm.models import load_policy

    torch.set_num_threads(1)
    pairs = write_pairs(tmp_path / "pairs.jsonl", tiny_llava / "images", n=3, missing=2)
    cfg = make_cfg(tiny_llava, tmp_path, pairs=pairs)
    out = train.run(cfg, 1)
    done = json.loads((out / "DONE").read_text())
    assert (done["pairs"], done["skipped"], done["steps"]) == (3, 2, 3)  # 3 pairs, batch 1, 1 epoch
    assert done["skipped_by_reason"] == {"image not found": 2}
    assert [json.loads(x)["line"] for x in (out / "skipped.jsonl").read_text().splitlines()] == [4, 5]
    assert not (out / "checkpoint.tmp").exists() and (out / "config.yaml").is_file()
    ckpt = out / "checkpoint"
    assert not (ckpt / "adapter_config.json").exists()
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava / "policy").state_dict()
    merged = AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()
    assert set(merged) == set(base)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(".language_model." in k and k.endswith("proj.weight") for k in changed)
    policy = load_policy(cfg.model, str(ckpt))  # the merged checkpoint loads with the Auto classes
    assert {k: v.shape for k, v in policy.model.state_dict().items()} == {k: v.shape for k, v in merged.items()}
    stamp = (out / "DONE").stat().st_mtime_ns
    assert train.run(cfg, 1) == out and (out / "DONE").stat().st_mtime_ns == stamp  # resumed: nothing redone


def test_crash_while_saving_leaves_no_checkpoint_and_merge_false_keeps_the_adapter(tiny_llava, tmp_path, monkeypatch):
    from transformers import ProcessorMixin

    torch.set_num_threads(1)
    cfg = make_cfg(tiny_llava, tmp_path, "train.merge=false", "train.trl_args={max_steps: 1}")

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(ProcessorMixin, "save_pretrained", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            train.run(cfg, 1)
    out = Path(cfg.out)
    assert not (out / "checkpoint").exists() and not (out / "DONE").exists()
    train.run(cfg, 1)  # the re-run redoes the stage and completes it
    assert (out / "DONE").is_file() and not (out / "checkpoint.tmp").exists()
    adapter = json.loads((out / "checkpoint" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and not (out / "checkpoint" / "model.safetensors").exists()


def test_full_language_model_training_freezes_vision_and_reference(tiny_llava, tmp_path):
    torch.set_num_threads(1)
    cfg = make_cfg(tiny_llava, tmp_path, "train.use_lora=false", "train.trl_args={max_steps: 2}")
    dataset, _ = train.load_pairs(train.pairs_path(cfg))
    policy = train.load_model(cfg)
    trainer = train.build_trainer(cfg, policy, dataset, tmp_path / "m.jsonl")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(".language_model." in n or n.startswith("lm_head") for n in moved)
    assert any(n.startswith("lm_head") for n in moved)
    assert all(torch.equal(p, ref_before[n]) for n, p in trainer.ref_model.named_parameters())


def test_missing_or_empty_pairs_is_a_one_line_error(tiny_llava, tmp_path, capsys):
    args = ["train", f"model.path={tiny_llava / 'policy'}", f"out={tmp_path / 'train'}"]
    assert main(args + [f"train.pairs={tmp_path / 'nope.jsonl'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pairs file not found" in err and "nope.jsonl" in err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(args + [f"train.pairs={tmp_path / 'empty.jsonl'}"]) == 2
    assert "no usable pairs" in capsys.readouterr().err
    # default location: <out>/../generate/pairs.jsonl when present
    cfg = load_config(None, [f"out={tmp_path / 'round_1' / 'train'}"])
    assert train.pairs_path(cfg) == tmp_path / "round_1" / "train" / "pairs.jsonl"
    gen = write_pairs(tmp_path / "round_1" / "generate" / "pairs.jsonl", tiny_llava / "images")
    assert train.pairs_path(cfg) == gen


def test_reference_from_the_pairs_mixes_with_trls_and_trains_the_same(tiny_llava, tmp_path, monkeypatch):
    """train.reference=search on two pairs, one with searched reference fields (here TRL's own values, taken as
    exact) and one without: the second gets TRL's reference before training, no reference forward runs in
    training (DONE says so), and every step's loss equals train.reference=model's."""
    from csr_vlm import search_reference

    torch.set_num_threads(1)
    pairs = write_pairs(tmp_path / "pairs.jsonl", tiny_llava / "images", n=2)
    cfg = make_cfg(tiny_llava, tmp_path, "train.max_length=null", "train.reference=model", pairs=pairs)
    dataset, _ = train.load_pairs(pairs)
    trainer = train.build_trainer(cfg, train.load_model(cfg), dataset, tmp_path / "m.jsonl")
    (chosen, rejected), = search_reference._trl_reference(trainer, [0])
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    rows[0].update(search_reference.reference_fields([], ([], chosen), ([], rejected)))
    with_ref = tmp_path / "pairs_ref.jsonl"
    with_ref.write_text("".join(json.dumps(r) + "\n" for r in rows))
    original = search_reference.why_not_exact
    monkeypatch.setattr(search_reference, "why_not_exact",
                        lambda row, rec, proc: None if "ref_tokens" in rec else original(row, rec, proc))
    losses = {}
    for how in ("model", "search"):
        out = tmp_path / how
        run_cfg = load_config(None, [f"model.path={tiny_llava / 'policy'}", f"out={out}", f"train.pairs={with_ref}",
                                     *TINY, "train.max_length=null", f"train.reference={how}"])
        train.run(run_cfg, 1)
        losses[how] = [json.loads(x)["loss"] for x in (out / "train_metrics.jsonl").read_text().splitlines()
                       if '"loss"' in x]
        done = json.loads((out / "DONE").read_text())["reference"]
        if how == "search":
            assert (done["from_search"], done["fallback"], done["reference_pass"]) == (1, 1, "none")
            assert done["fallback_by_reason"] == {"no searched log-probs": 1}
        else:
            assert done["reference_pass"] == "trl" and done["fallback_by_reason"] == {"train.reference=model": 2}
    assert losses["search"] == pytest.approx(losses["model"], abs=1e-5)
