"""The checkpoint `csr train` hands on, from any engine: gather the full weights, merge LoRA, save, verify.

Under DDP and ZeRO-2 every rank holds the whole model, so rank 0 merges and saves its own copy. Under ZeRO-3 and
FSDP no rank does: each holds a shard, and a rank-0-only merge would save empty tensors or wait for the other
ranks forever. So every rank takes part in gathering the full state dict onto rank 0 (`gather_full_weights`;
ZeRO-3's consolidated state dict, FSDP's full state dict offloaded to the CPU), and rank 0 builds an unsharded copy
of the trained model from it (`unsharded_copy`: the architecture on the meta device, the gathered tensors
assigned, nothing allocated twice), merges the LoRA adapter into it and saves. PEFT's own guidance for
merging under FSDP and DeepSpeed is the same: gather, then merge.

Before the checkpoint replaces the last one, `verify_checkpoint` reads it back: every tensor non-empty and finite,
and the model loads with the Auto classes without a missing, unexpected or resized weight (an adapter-only
checkpoint, `train.merge=false`: its tensors and its adapter config).

    full = gather_full_weights(trainer, engine)      # every rank
    model = model_to_save(trainer, full, merge)       # rank 0
"""

from __future__ import annotations

import gc
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- gather (every rank)


def full_state_dict(module, kind: str) -> dict[str, Any] | None:
    """The full (unsharded) state dict of a sharded module on rank 0 (other ranks: an empty dict or None); every
    rank must call it.

    Args:
        module: the DeepSpeed engine (kind "zero3") or the FSDP-wrapped model (kind "fsdp2" / "fsdp1").
    """
    if kind == "zero3":
        return module._zero3_consolidated_16bit_state_dict()  # the tensors as trained (fp32 stays fp32)
    if kind == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, FullStateDictConfig(True, True)):
            return module.state_dict()
    raise ValueError(f"unknown sharding kind {kind!r}")


def gather_full_weights(trainer, engine: dict[str, Any]) -> dict[str, Any] | None:
    """Every rank calls this after training: under ZeRO-3 / FSDP rank 0 gets the full state dict of the trained
    (PEFT) model; with unsharded weights (DDP, ZeRO-1/2, one process) None, rank 0's own model being whole."""
    if engine["engine"] == "deepspeed" and engine["zero_stage"] == 3:
        return full_state_dict(trainer.model_wrapped, "zero3")
    if engine["engine"] == "fsdp":
        return full_state_dict(trainer.model, "fsdp2" if engine["fsdp_version"] == 2 else "fsdp1")
    return None


# ---------------------------------------------------------------------------- merge (rank 0)


@contextmanager
def plain_loading():
    """Build and load models in this process alone: transformers' ZeRO-3 (zero.Init) and FSDP (rank-0 loading)
    hooks would start collectives that the other ranks never join."""
    from transformers.integrations import deepspeed as hf_ds

    saved_ref = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
    saved_fsdp = os.environ.get("ACCELERATE_USE_FSDP")
    hf_ds._hf_deepspeed_config_weak_ref = None
    os.environ["ACCELERATE_USE_FSDP"] = "false"
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved_ref
        if saved_fsdp is None:
            os.environ.pop("ACCELERATE_USE_FSDP", None)
        else:
            os.environ["ACCELERATE_USE_FSDP"] = saved_fsdp


def unsharded_copy(model, state: dict[str, Any]):
    """A whole, plain copy of `model` (a PEFT model or a transformers model) holding the gathered tensors.

    The architecture is built on the meta device and the tensors are assigned, not copied; buffers that no state
    dict holds (rotary tables) are built for real.

    Raises:
        InputError: the gathered state does not cover the model (a weight missing or of another shape).
    """
    import torch
    from accelerate import init_empty_weights

    peft_config = getattr(model, "peft_config", None)
    base = model.get_base_model() if peft_config else model
    with plain_loading(), init_empty_weights(include_buffers=False):
        copy = type(base)._from_config(base.config, dtype=next(iter(state.values())).dtype)
        if peft_config:
            from peft import get_peft_model

            copy = get_peft_model(copy, peft_config["default"])
    result = copy.load_state_dict(state, strict=False, assign=True)
    copy.tie_weights()
    left = [n for n, p in copy.named_parameters() if p.device.type == "meta"]
    wrong = [n for n in result.unexpected_keys]
    if left or wrong:
        raise InputError(f"train: the gathered weights do not match the model ({len(left)} missing, e.g. "
                         f"{(left or ['-'])[0]}; {len(wrong)} unexpected, e.g. {(wrong or ['-'])[0]})")
    return copy.eval().requires_grad_(False).to(torch.device("cpu"))


def model_to_save(trainer, full: dict[str, Any] | None, merge: bool):
    """Rank 0: the model to write. The trained model itself when it is whole, else an unsharded copy of the
    gathered weights; with `merge`, LoRA merged into it (merge_and_unload)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if full is not None:
        model = unsharded_copy(model, full)
        full.clear()
        gc.collect()
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


# ---------------------------------------------------------------------------- verify (rank 0)


def check_tensors(path: Path) -> int:
    """Every tensor of every *.safetensors file under path is non-empty and finite; returns how many there are.

    Raises:
        InputError: the first empty or non-finite tensor, or no weights file at all.
    """
    import torch
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"train: {path} holds no *.safetensors file")
    count = 0
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                if t.numel() == 0:
                    raise InputError(f"train: {file.name} holds an empty tensor ({key}, shape {tuple(t.shape)})")
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise InputError(f"train: {file.name} holds a non-finite value in {key}")
                count += 1
    return count


def verify_checkpoint(path: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Read a written checkpoint back: tensors non-empty and finite; a full checkpoint loads with
    AutoModelForImageTextToText and the processor loader of every stage, with every weight in place; an adapter has
    a valid config.

    Raises:
        InputError: what is wrong (the checkpoint is then not put in place).
    """
    tensors = check_tensors(path)
    with plain_loading():
        if (path / "adapter_config.json").is_file():
            from peft import PeftConfig

            PeftConfig.from_pretrained(str(path))
            return {"tensors": tensors, "kind": "adapter"}
        from transformers import AutoModelForImageTextToText

        from .models.processors import load_processor

        try:
            load_processor(str(path), trust_remote_code=trust_remote_code)
            model, info = AutoModelForImageTextToText.from_pretrained(str(path), output_loading_info=True,
                                                                      trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            raise InputError(f"train: {path} does not load with the Auto classes ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    del model
    if bad:
        shown = json.dumps({k: sorted(map(str, v))[:3] for k, v in bad.items()})
        raise InputError(f"train: {path} loads with weights out of place: {shown}")
    return {"tensors": tensors, "kind": "full"}
