"""Let a torchvision wheel whose C++ ops cannot load (a CUDA build next to a CPU torch) still import.

Installed by `scripts/setup.sh --vllm` into the vLLM environment's site-packages, with a `.pth` line that
calls `install()`: vLLM imports torchvision's transforms, and PyPI has no CPU torchvision matching
torch 2.13.0+cpu.

torchvision/_meta_registrations.py registers fake kernels for torchvision::nms and ::qnms without
checking that the C++ extension loaded; with no schema the import fails. This hook runs once, right
before that module is imported (after torchvision.extension tried to load _C), and declares the two
schemas only if the extension did not load. Pure-Python torchvision (transforms, v2) then works; the
C++ ops (nms, roi_align, ...) stay unavailable, as torchvision reports for any build without them.
"""
import sys

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision._meta_registrations":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        ext = sys.modules.get("torchvision.extension")
        if ext is not None and not ext._has_ops():
            import torch
            from torch import library as op_registry

            for op, schema in _SCHEMAS.items():
                if not _has_schema(torch, op):
                    op_registry.define(f"{NAMESPACE}::{op}", schema)
        return None  # the normal finders import the module


NAMESPACE = "torchvision"  # the operator library whose schemas the shim registers


def _has_schema(torch, op):
    try:
        _ = getattr(torch.ops.torchvision, op).default
        return True
    except (AttributeError, RuntimeError):
        return False


def install():
    if not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
