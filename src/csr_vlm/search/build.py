"""Which engine runs the model: `build_engine(cfg, local_rank, world)` (search.engine: hf or vllm)."""

from __future__ import annotations

import os

from .engine import Engine


def build_engine(cfg, local_rank: int = 0, world: int = 1) -> tuple[Engine, str]:
    """The engine search.engine names, on this rank's devices, and the device the CLIP scorer should use.

    hf: the policy on cuda:<local_rank> under torchrun (model.device=auto), else model.device. vllm: one
    engine per rank over vllm.tensor_parallel_size GPUs (rank r takes GPUs r*tp .. r*tp+tp-1, set through
    CUDA_VISIBLE_DEVICES before vLLM starts); the CLIP goes on the first of them.
    """
    if cfg.search.engine == "vllm":
        tp = cfg.vllm.tensor_parallel_size
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if world > 1 and visible:
            mine = visible.split(",")[local_rank * tp:(local_rank + 1) * tp]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        from .vllm_engine import VLLMEngine

        engine = VLLMEngine(cfg.model.path, cfg.search, cfg.vllm, dtype=cfg.model.dtype, seed=cfg.seed,
                            trust_remote_code=cfg.model.trust_remote_code)
        import torch

        return engine, "cuda:0" if torch.cuda.is_available() else "cpu"
    import torch

    from ..models import load_policy
    from .hf_engine import HFEngine

    device = None
    if world > 1 and cfg.model.device == "auto" and torch.cuda.is_available():
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    policy = load_policy(cfg.model, device=device)
    return HFEngine(policy, cfg.search), str(policy.device)
