"""Run by tests/test_scaling.py under `torchrun --nproc_per_node 2` (not a test module): one job, many checks, so
torch, transformers and DeepSpeed are imported once.

    torchrun --standalone --nproc_per_node 2 tests/multirank.py WORK TINY PAIRS ANNOTATIONS

1. `csr train` under each engine config of configs/accelerate: ddp, zero2, zero3 (the last two when deepspeed is
   installed), each with the environment accelerate's launcher sets for that file, into WORK/<engine>/.
2. `csr train` under fsdp2.yaml: accelerate engages FSDP on GPUs only, so on CPUs it must refuse (exit 2).
3. The gather-then-merge path on a LoRA model sharded with torch's own FSDP2 `fully_shard` (which does run on
   CPUs): the merged weights gathered from the shards equal those merged from an unsharded copy.
4. `csr loop` for one round, run twice (the second reuses every stage), into WORK/loop/.
Each rank writes WORK/rank<r>.json with what it saw.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ["train.lora_r=4", "train.lora_alpha=8", "train.learning_rate=1e-3", "train.max_length=256",
              "train.lora_dropout=0"]  # dropout masks differ between engines: off, so weights can be compared


def accelerate_env(name: str, nproc: int) -> dict[str, str]:
    """The ACCELERATE_* / FSDP_* variables `accelerate launch --config_file configs/accelerate/<name>.yaml` gives its
    processes (accelerate's own launch code, as its launch command calls it)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "configs" / "accelerate" / f"{name}.yaml"),
                                               "--num_processes", str(nproc), "unused.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


@contextlib.contextmanager
def environment(extra: dict[str, str]):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def csr(argv: list[str]) -> tuple[int, str, str]:
    """`csr ...` in this process: (exit code, stdout, stderr)."""
    from csr_vlm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    gc.collect()
    return code, out.getvalue(), err.getvalue()


def fsdp2_gather_then_merge(tiny: Path) -> float:
    """Largest difference between LoRA merged from FSDP2 shards (gathered) and merged from the whole model."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForImageTextToText

    from csr_vlm.checkpoint import full_state_dict, unsharded_copy

    def lora_model():
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny / "policy"),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False))
        return model

    whole = lora_model().merge_and_unload().state_dict()
    model = lora_model()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.get_base_model().model.language_model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert type(next(model.parameters())).__name__ == "DTensor"
    state = full_state_dict(model, "fsdp2")  # every rank
    if dist.get_rank() != 0:
        return 0.0
    merged = unsharded_copy(model, state).merge_and_unload().state_dict()
    assert merged.keys() == whole.keys()
    return max((merged[k] - whole[k]).abs().max().item() for k in whole)


def main(work: Path, tiny: Path, pairs: Path, annotations: Path) -> None:
    import importlib.util

    rank = int(os.environ["RANK"])
    seen: dict = {"engines": {}}
    engines = ["ddp"] + (["zero2", "zero3"] if importlib.util.find_spec("deepspeed") else [])
    train = ["train", f"model.path={tiny / 'policy'}", f"train.pairs={pairs}", *TINY_TRAIN]
    for name in engines:
        with environment(accelerate_env(name, 2)):
            code, _, err = csr([*train, f"out={work / name}"])
        seen["engines"][name] = {"code": code, "err": err[-2000:]}
    with environment(accelerate_env("fsdp2", 2)):
        code, _, err = csr([*train, f"out={work / 'fsdp2'}"])
    seen["fsdp2_refused"] = {"code": code, "err": err.strip().splitlines()[-1:] }
    seen["fsdp2_gather_merge_diff"] = fsdp2_gather_then_merge(tiny)
    loop = ["loop", f"out={work / 'loop'}", f"model.path={tiny / 'policy'}", f"reward.clip_path={tiny / 'clip'}",
            f"data.prompts={tiny / 'prompts.jsonl'}", f"data.image_root={tiny}", *TINY_TRAIN,
            "search.num_candidates=3", "search.keep_top=1", "search.keep_bottom=1", "search.max_sentences=2",
            "search.max_new_tokens=6", "search.filters=[]", "data.max_prompts=4", "loop.rounds=1",
            f"eval.annotations={annotations}", f"eval.image_root={tiny}", "eval.num_images=2",
            "eval.max_new_tokens=6", "eval.tasks=[chair]"]
    for attempt in ("first", "again"):
        code, out, err = csr(loop)
        seen[f"loop_{attempt}"] = {"code": code, "out": out[-3000:], "err": err[-2000:]}
    (work / f"rank{rank}.json").write_text(json.dumps(seen, indent=1))


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:5]))
