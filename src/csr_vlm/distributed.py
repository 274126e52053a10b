"""Ranks and engines: which training engine a `csr train` run asked for, which one runs, and the checks between.

A launch asks for an engine through accelerate's environment (`accelerate launch --config_file
configs/accelerate/zero3.yaml` sets ACCELERATE_USE_DEEPSPEED and the ZeRO stage; an FSDP config sets
ACCELERATE_USE_FSDP and FSDP_VERSION) or through `train.trl_args` (`deepspeed`, `fsdp`). The Trainer decides what
actually runs, and it can fall back without a word: accelerate engages FSDP on GPUs only (on CPUs an FSDP config
trains as DDP), and DeepSpeed only when the Trainer is not told to use the CPU. So `check_engine` compares the two
before the first step and stops with one line when sharding was asked for and did not engage, and `EngineCheck`
looks at the prepared model itself once training begins (ZeRO-3: partitioned parameters; FSDP: sharded ones).
`engine_record` is what DONE and the manifest keep: engine, world size, backend, ZeRO stage, FSDP version.

Under torchrun every stage runs on every rank; rank 0 owns the lock and the files that describe the run.
`check_shared_out` is how a multi-node job finds out that its ranks do not share `out`.

    asked = requested(args)            # before the model loads (ZeRO-3 then loads it sharded)
    check_engine(asked, running(trainer))
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

from .errors import InputError

SHARED_OUT = "`out` must be one shared directory for all nodes (the same path on a file system every node mounts)"
"""The sentence every refusal of a multi-node run without a shared `out` carries."""


def rank() -> int:
    """This process's global rank (0 outside torchrun / accelerate launch)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested(args=None) -> dict[str, Any]:
    """The engine the launch asks for: {"engine": "deepspeed"|"fsdp"|"ddp"|"single", "zero_stage", "fsdp_version"}
    from accelerate's launch environment, else from the Trainer arguments (`deepspeed`, `fsdp`)."""
    asked: dict[str, Any] = {"engine": "ddp" if world_size() > 1 else "single", "zero_stage": None,
                             "fsdp_version": None}
    ds_config = getattr(getattr(args, "hf_deepspeed_config", None), "config", None)
    if _flag("ACCELERATE_USE_DEEPSPEED") or ds_config:
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        if stage is None and ds_config:
            stage = ds_config.get("zero_optimization", {}).get("stage")
        asked.update(engine="deepspeed", zero_stage=int(stage) if stage not in (None, "") else None)
    elif _flag("ACCELERATE_USE_FSDP") or getattr(args, "fsdp", None):
        version = os.environ.get("FSDP_VERSION") or (getattr(args, "fsdp_config", None) or {}).get("version", 1)
        asked.update(engine="fsdp", fsdp_version=int(version))
    return asked


def device_args(cuda: bool) -> dict[str, Any]:
    """The Trainer's device arguments. On GPUs the defaults. On CPUs `use_cpu`, except under DeepSpeed: a Trainer
    told to use the CPU runs plain DDP and leaves DeepSpeed out, so DeepSpeed gets the gloo backend instead."""
    if cuda:
        return {"use_cpu": False}
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return {"use_cpu": False, "ddp_backend": "gloo"}
    return {"use_cpu": True}


def running(trainer) -> dict[str, Any]:
    """The engine the Trainer's accelerator set up (known once the Trainer exists, before the first step)."""
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    world = trainer.accelerator.num_processes
    got: dict[str, Any] = {"engine": "ddp" if world > 1 else "single", "zero_stage": None, "fsdp_version": None}
    if state.distributed_type == DistributedType.DEEPSPEED:
        got.update(engine="deepspeed", zero_stage=int(state.deepspeed_plugin.zero_stage))
    elif state.distributed_type == DistributedType.FSDP:
        got.update(engine="fsdp", fsdp_version=int(getattr(state.fsdp_plugin, "fsdp_version", 1)))
    return got


def set_up(args, asked: dict[str, Any]) -> dict[str, Any]:
    """The engine the Trainer will set up, known from its arguments' process state before the policy loads
    (DeepSpeed shows there; FSDP is added by accelerate only on GPU-type multi-device states, never on CPUs)."""
    from accelerate.utils import DistributedType

    state = args.distributed_state
    world = state.num_processes
    got: dict[str, Any] = {"engine": "ddp" if world > 1 else "single", "zero_stage": None, "fsdp_version": None}
    if state.distributed_type == DistributedType.DEEPSPEED:
        got.update(engine="deepspeed", zero_stage=asked["zero_stage"])
    elif asked["engine"] == "fsdp" and state.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU):
        got.update(engine="fsdp", fsdp_version=asked["fsdp_version"])
    return got


def sharded(got: dict[str, Any]) -> bool:
    """Whether the engine shards the weights themselves (ZeRO-3, FSDP): then no rank holds the whole model."""
    return got["engine"] == "fsdp" or (got["engine"] == "deepspeed" and got["zero_stage"] == 3)


def engine_record(trainer, got: dict[str, Any], loaded_sharded: bool) -> dict[str, Any]:
    """What DONE and the manifest keep of the engine that ran."""
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    return {**got, "world_size": trainer.accelerator.num_processes, "backend": backend,
            "weights_sharded": sharded(got), "loaded_sharded": loaded_sharded}


def check_engine(asked: dict[str, Any], got: dict[str, Any]) -> None:
    """Stop, before any training, when the launch asked for DeepSpeed or FSDP and the Trainer set up another engine.

    Raises:
        InputError: one line naming what was asked for and what would have run.
    """
    if asked["engine"] not in ("deepspeed", "fsdp"):
        return
    same = asked["engine"] == got["engine"] and (asked["zero_stage"] in (None, got["zero_stage"])) and \
        (asked["fsdp_version"] in (None, got["fsdp_version"]))
    if same:
        return
    why = " (accelerate engages FSDP on GPUs only)" if asked["engine"] == "fsdp" else ""
    raise InputError(f"train: the launch asks for {describe(asked)} but the Trainer set up {describe(got)}{why}; "
                     "stopping rather than training another way")


def describe(engine: dict[str, Any]) -> str:
    """`DeepSpeed ZeRO-3`, `FSDP2`, `DDP` or `one process`."""
    if engine["engine"] == "deepspeed":
        return f"DeepSpeed ZeRO-{engine['zero_stage']}" if engine["zero_stage"] is not None else "DeepSpeed"
    if engine["engine"] == "fsdp":
        return f"FSDP{engine['fsdp_version'] or ''}"
    return "DDP" if engine["engine"] == "ddp" else "one process"


def sharded_parameters(model) -> int:
    """How many of the model's parameters this rank holds only a shard of, or none of (ZeRO-3 partitions, FSDP
    DTensors and flat parameters, the meta tensors of a rank that lets rank 0 read the checkpoint)."""
    count = 0
    for p in model.parameters():
        if hasattr(p, "ds_id") or p.is_meta or type(p).__name__ in ("DTensor", "FlatParameter") or \
                type(getattr(p, "data", None)).__name__ == "DTensor":
            count += 1
    return count


def engine_check_callback(got: dict[str, Any]):
    """A TrainerCallback that, when training begins (the model prepared), stops the run if the engine was to shard
    the weights and no parameter is sharded."""
    from transformers import TrainerCallback

    class EngineCheck(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None and sharded(got) and not sharded_parameters(model):
                raise InputError(f"train: {describe(got)} is set up but no parameter of the model is sharded; "
                                 "stopping rather than training unsharded")

    return EngineCheck()


# ---------------------------------------------------------------------------- FSDP wrapping


def wrap_classes(model) -> list[str]:
    """The layer classes FSDP should wrap one by one: those of the model's `layers` / `blocks` lists (the language
    model's decoder layers and the vision tower's encoder layers)."""
    import torch

    layers = getattr(model.get_decoder(), "layers", None)
    found: list[str] = [type(layers[0]).__name__] if layers else []  # the decoder's first, then the vision tower's
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and name.rsplit(".", 1)[-1] in ("layers", "blocks"):
            cls = type(module[0]).__name__
            if cls not in found:
                found.append(cls)
    return found


def check_wrap_classes(model) -> None:
    """Under an FSDP launch with a transformer-based wrap policy, every class named for wrapping must exist in this
    model (a class name from another family fails deep inside accelerate).

    Raises:
        InputError: naming the missing classes and the ones this model has.
    """
    if not _flag("ACCELERATE_USE_FSDP"):
        return
    named = [c.strip() for c in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip()]
    present = {type(m).__name__ for m in model.modules()}
    missing = [c for c in named if c not in present]
    if missing:
        raise InputError(f"train: fsdp_transformer_layer_cls_to_wrap names {', '.join(missing)}, which "
                         f"{type(model).__name__} does not have; for this model use "
                         f"--fsdp_transformer_layer_cls_to_wrap {','.join(wrap_classes(model))}")


# ---------------------------------------------------------------------------- shared out


def check_shared_out(out: Path, dist) -> None:
    """Every rank must see the directory rank 0 prepared: rank 0 writes a file with a fresh name into
    `out/shards/`, the name goes to every rank, and each says whether it sees it. Call after rank 0 has prepared
    `out` (and before any rank writes there).

    Raises:
        InputError: on every rank, naming the ranks (and hosts) that cannot see it.
    """
    if dist is None:
        return
    name = [f".visible-{uuid.uuid4().hex}" if dist.get_rank() == 0 else None]
    probe = out / "shards"
    if dist.get_rank() == 0:
        (probe / name[0]).write_text(socket.gethostname() + "\n")
    dist.broadcast_object_list(name, src=0)
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, ((probe / name[0]).is_file(), socket.gethostname()))
    dist.barrier()
    if dist.get_rank() == 0:
        (probe / name[0]).unlink(missing_ok=True)
    blind = [f"rank {r} on {host}" for r, (ok, host) in enumerate(seen) if not ok]
    if blind:
        raise InputError(f"out: {', '.join(blind)} cannot see {out} as rank 0 wrote it; {SHARED_OUT}")


def init_group():
    """torch.distributed under torchrun, started once with a long timeout (a rank may wait hours at a barrier while
    rank 0 evaluates); returns the module, or None in one process. gloo on CPUs, NCCL for CUDA tensors."""
    if world_size() <= 1:
        return None
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(hours=24))
    return dist
