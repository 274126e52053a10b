"""Models: the policy (policy.py), the CLIP scorer (clip.py) and tiny random-weight models for tests (tiny/).

    from csr_vlm.models import load_policy, ClipScorer
"""

from .clip import ClipScorer, load_clip
from .policy import Policy, check_model_path, load_policy, resolve_device, resolve_dtype, sentence_end_ids

__all__ = ["ClipScorer", "Policy", "check_model_path", "load_clip", "load_policy", "resolve_device", "resolve_dtype",
           "sentence_end_ids"]
