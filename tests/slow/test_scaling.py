"""Beyond one process: `csr train` under DDP, DeepSpeed ZeRO-2 and ZeRO-3 (weights really sharded) each within 1e-5
of one process, FSDP2 refused on CPUs and its gather-then-merge path exact, `csr loop` under torchrun; plus the
checks around them (engine refusal, FSDP wrap classes, checkpoint verification, LoRA dropout, shared `out`).

    .venv/bin/python -m pytest tests/test_scaling.py            (the ZeRO engines need deepspeed installed)

The multi-process checks share one 2-process torchrun job (tests/slow/multirank.py), so the libraries load once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, write_annotations, write_pairs

from csr_vlm import checkpoint, distributed, train
from csr_vlm.config import load_config
from csr_vlm.errors import InputError

HERE = Path(__file__).parent
NO_DROPOUT = [*TINY_TRAIN, "train.lora_dropout=0"]  # dropout masks differ between engines: off, to compare weights
TOLERANCE = 1e-5


# ---------------------------------------------------------------------------- one job, several checks


@pytest.fixture(scope="module")
def multirank(tiny_llava, tmp_path_factory):
    """(work dir, [rank 0's findings, rank 1's], the one-process checkpoint's tensors)."""
    from safetensors.torch import load_file

    work = tmp_path_factory.mktemp("multirank")
    pairs = write_pairs(work / "pairs.jsonl", tiny_llava / "images", n=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "multirank.py"), str(work), str(tiny_llava), str(pairs), str(write_annotations(tiny_llava))]
    path = os.pathsep.join([str(HERE.parents[1] / "src"), str(HERE), str(HERE.parent)])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    # the reference, one process with the same global batch (2 ranks x 1 = 1 x 2), while the job runs
    torch.set_num_threads(1)
    one = load_config(None, [f"model.path={tiny_llava / 'policy'}", f"out={work / 'one'}", f"train.pairs={pairs}",
                             *NO_DROPOUT, "train.per_device_train_batch_size=2"])
    reference = load_file(train.run(one, 1) / "checkpoint" / "model.safetensors")
    log = proc.communicate(timeout=420)[0]
    assert proc.returncode == 0, log[-4000:]
    seen = [json.loads((work / f"rank{r}.json").read_text()) for r in (0, 1)]
    return work, seen, reference


ENGINES = {"ddp": ("ddp", None), "zero2": ("deepspeed", 2), "zero3": ("deepspeed", 3)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ENGINES))
def test_each_engine_matches_one_process(multirank, name):
    from safetensors.torch import load_file

    if name != "ddp":
        pytest.importorskip("deepspeed")
    work, seen, reference = multirank
    assert [s["engines"][name]["code"] for s in seen] == [0, 0], seen[0]["engines"][name]["err"]
    out = work / name
    merged = load_file(out / "checkpoint" / "model.safetensors")
    assert merged.keys() == reference.keys()
    diff = max((merged[k] - reference[k]).abs().max().item() for k in reference)
    print(f"{name}: max |w - w_one_process| = {diff:.2e}")
    assert diff < TOLERANCE
    done = json.loads((out / "DONE").read_text())
    engine, stage = ENGINES[name]
    assert done["engine"] == {"engine": engine, "zero_stage": stage, "fsdp_version": None, "world_size": 2,
                              "backend": "gloo", "weights_sharded": stage == 3, "loaded_sharded": stage == 3}
    assert (done["world_size"], done["steps"]) == (2, 2)  # 4 pairs / (2 ranks x batch 1)
    assert sum('"loss"' in line for line in (out / "train_metrics.jsonl").read_text().splitlines()) == 2
    assert not (out / "checkpoint.tmp").exists()


@pytest.mark.slow
def test_fsdp2_is_refused_on_cpus_and_its_gather_then_merge_is_exact(multirank):
    work, seen, _ = multirank
    for s in seen:
        assert s["fsdp2_refused"]["code"] == 2
        assert s["fsdp2_refused"]["err"] == [
            "csr train: error: train: the launch asks for FSDP2 but the Trainer set up "
            "DDP (accelerate engages FSDP on GPUs only); stopping rather than training another way"]
    assert not (work / "fsdp2" / "DONE").exists() and not (work / "fsdp2" / "checkpoint").exists()
    assert seen[0]["fsdp2_gather_merge_diff"] == 0.0  # torch's fully_shard on 2 CPU ranks, LoRA B non-zero


@pytest.mark.slow
def test_loop_under_torchrun_rank_0_owns_lock_and_manifest(multirank):
    work, seen, _ = multirank
    out = work / "loop"
    for attempt in ("first", "again"):
        assert [s[f"loop_{attempt}"]["code"] for s in seen] == [0, 0], seen[0][f"loop_{attempt}"]["err"]
        assert seen[1][f"loop_{attempt}"]["out"] == ""  # one table, from rank 0
    assert "[round_1/train] reused" in seen[0]["loop_again"]["out"] and "best round: 1" in seen[0]["loop_again"]["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "backend": "gloo"} and manifest["best_round"] == 1
    assert manifest["stages"]["round_1/train"]["engine"]["world_size"] == 2
    assert json.loads((out / "round_1" / "train" / "DONE").read_text())["world_size"] == 2
    stats = json.loads((out / "round_1" / "generate" / "stats.json").read_text())
    assert (stats["world_size"], stats["counts"]["missing"], stats["counts"]["prompts_searched"]) == (2, 0, 4)
    assert not list(out.rglob(".lock")) and (out / "round_1" / "eval" / "DONE").is_file()


# ---------------------------------------------------------------------------- the checks, one process


def test_launch_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    root = HERE.parents[1] / "configs" / "accelerate"
    assert sorted(p.stem for p in root.glob("*.yaml")) == ["ddp", "fsdp2", "zero2", "zero3"]
    loaded = {p.stem: load_config_from_file(str(p)) for p in root.glob("*.yaml")}
    assert {k: c.distributed_type.value for k, c in loaded.items()} == {
        "ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp2": "FSDP"}
    assert loaded["zero3"].deepspeed_config["zero3_init_flag"] and loaded["zero2"].deepspeed_config["zero_stage"] == 2
    fsdp = loaded["fsdp2"].fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer,CLIPEncoderLayer"
    assert all(c.mixed_precision == "no" for c in loaded.values())  # precision: train.bf16, through the Trainer



def test_sharding_asked_for_and_not_set_up_is_refused():
    asked = {"engine": "deepspeed", "zero_stage": 3, "fsdp_version": None}
    distributed.check_engine(asked, dict(asked))
    with pytest.raises(InputError, match="asks for DeepSpeed ZeRO-3 but the Trainer set up DDP"):
        distributed.check_engine(asked, {"engine": "ddp", "zero_stage": None, "fsdp_version": None})
    with pytest.raises(InputError, match="asks for DeepSpeed ZeRO-3 but the Trainer set up DeepSpeed ZeRO-2"):
        distributed.check_engine(asked, {"engine": "deepspeed", "zero_stage": 2, "fsdp_version": None})
    distributed.check_engine({"engine": "ddp", "zero_stage": None, "fsdp_version": None},
                             {"engine": "single", "zero_stage": None, "fsdp_version": None})


def test_fsdp_wrap_classes_are_checked_against_the_model(tiny_family, monkeypatch):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_family / "policy")
    classes = distributed.wrap_classes(model)
    assert len(classes) == 2 and classes[0].endswith("DecoderLayer")  # the decoder's layers, the vision tower's
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", ",".join(classes))
    distributed.check_wrap_classes(model)
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "Qwen2_5_VLDecoderLayer")
    with pytest.raises(InputError, match=f"use --fsdp_transformer_layer_cls_to_wrap {','.join(classes)}$"):
        distributed.check_wrap_classes(model)


def test_unsharded_copy_merges_like_the_model_and_verify_refuses_bad_tensors(tiny_llava, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_llava / "policy"),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=r"gathered weights do not match the model \(2 missing"):
        checkpoint.unsharded_copy(model, {k: v for k, v in state.items() if "lora_A" not in k or ".0." not in k
                                          or "q_proj" not in k})
    copy = checkpoint.unsharded_copy(model, state)
    want = model.merge_and_unload().state_dict()
    merged = copy.merge_and_unload()
    assert all(torch.equal(merged.state_dict()[k], want[k]) for k in want)
    merged.save_pretrained(tmp_path / "ok")
    AutoProcessor.from_pretrained(tiny_llava / "policy").save_pretrained(tmp_path / "ok")
    tensors = len(load_file(tmp_path / "ok" / "model.safetensors"))
    assert checkpoint.verify_checkpoint(tmp_path / "ok")["tensors"] == tensors
    weights = load_file(tmp_path / "ok" / "model.safetensors")
    for name, bad in (("empty", torch.empty(0)), ("nan", torch.full((2,), float("nan")))):
        key = next(iter(weights))
        save_file({**weights, key: bad}, tmp_path / "ok" / "model.safetensors")
        with pytest.raises(InputError, match="an empty tensor" if name == "empty" else "a non-finite value"):
            checkpoint.verify_checkpoint(tmp_path / "ok")


def test_lora_dropout_is_applied_and_the_models_own_stay_off(tiny_llava, tmp_path):
    torch.set_num_threads(1)
    pairs = write_pairs(tmp_path / "pairs.jsonl", tiny_llava / "images", n=2)
    cfg = load_config(None, [f"model.path={tiny_llava / 'policy'}", f"out={tmp_path / 'train'}",
                             f"train.pairs={pairs}",
                             *TINY_TRAIN, "train.lora_dropout=0.05"])
    dataset, _ = train.load_pairs(pairs)
    trainer = train.build_trainer(cfg, train.load_model(cfg), dataset, tmp_path / "m.jsonl")
    drops = {n: m.p for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    lora = {n: p for n, p in drops.items() if ".lora_dropout." in n}
    assert len(lora) == 14 and set(lora.values()) == {0.05}  # 2 layers x 7 linears, as configured
    assert all(p == 0 for n, p in drops.items() if n not in lora)  # TRL's disable_dropout for the rest


class _FakeDist:
    """Two ranks as seen from rank 0, the other on a host that does not see rank 0's files."""

    def get_rank(self):
        return 0

    def get_world_size(self):
        return 2

    def broadcast_object_list(self, box, src=0):
        pass

    def all_gather_object(self, seen, mine):
        seen[:] = [mine, (False, "node-b")]

    def barrier(self):
        pass


def test_a_rank_that_cannot_see_out_stops_the_job_and_generate_needs_every_prompt(tmp_path):
    from csr_vlm.data import write_json
    from csr_vlm.shards import check_produced

    (tmp_path / "shards").mkdir()
    distributed.check_shared_out(tmp_path, None)  # one process: nothing to check
    with pytest.raises(InputError, match=r"rank 1 on node-b cannot see .* `out` must be one shared directory for all "
                                         "nodes"):
        distributed.check_shared_out(tmp_path, _FakeDist())
    assert list((tmp_path / "shards").iterdir()) == []  # the probe file is removed
    write_json(tmp_path / "stats.json", {"counts": {"pairs": 2, "prompts_valid": 8, "missing": 4},
                                         "first_missing": "p5"})
    expected = r"4 of 8 prompts are in no shard .* \(first: p5\); the stage is not done.*shared directory"
    with pytest.raises(InputError, match=expected):
        check_produced(tmp_path)
