"""The image-text scorer: a CLIP (or SigLIP) loaded with AutoModel, scoring R_I = 100 * cosine, batched.

    scorer = ClipScorer("openai/clip-vit-large-patch14-336")
    emb = scorer.image_embedding(pil_image)
    scorer.score(emb, ["A dog on the grass.", "A red car."])   # [23.1, 17.4]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .policy import check_model_path, one_line, resolve_device, resolve_dtype


class ClipScorer:
    """Image-text relevance as 100 * cosine of CLIP (or SigLIP) embeddings, batched, one image embedding per image.

    The `clip` kind of scorer.Scorer (reward.scorer=clip, the default)."""

    kind = "clip"

    def __init__(self, path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 64):
        self.model, self.processor = load_clip(path, device=device, dtype=dtype)
        self.path = str(path)
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        self.max_length = self._max_length()
        # SigLIP's text tower was trained on texts padded to its full length; its embeddings depend on it
        self.padding = "max_length" if str(self.model.config.model_type).startswith("siglip") else True
        self._check_tokenizer()

    @property
    def device(self):
        return self.model.device

    def _max_length(self) -> int:
        limits = [getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", None)]
        limits.append(getattr(self.tokenizer, "model_max_length", None))
        limits = [n for n in limits if isinstance(n, int) and 0 < n < 100_000]
        return min(limits) if limits else 77

    def _check_tokenizer(self) -> None:
        """A CLIP whose tokenizer cannot encode text must fail now, not mid-run."""
        vocab = getattr(getattr(self.model.config, "text_config", None), "vocab_size", None)
        try:
            ids = self.tokenizer(["a photo of a dog."], truncation=True, max_length=self.max_length)["input_ids"][0]
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure is the same user problem
            raise InputError(f"reward.clip_path: {self.path} has no tokenizer that encodes text "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not ids or (vocab and max(ids) >= vocab):
            raise InputError(f"reward.clip_path: {self.path}: tokenizer ids do not fit the text model's vocabulary")

    def image_embedding(self, image) -> Any:
        """Unit-norm image embedding (D,) for one PIL image."""
        import torch

        pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            emb = _features(self.model.get_image_features(pixel_values=pixels))[0].float()
        return emb / emb.norm()

    def score(self, image_embedding, texts: Sequence[str]) -> list[float]:
        """Raw 100 * cos(image, text) per text (no clamp); texts truncated to CLIP's max length."""
        import torch

        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t if t.strip() else " " for t in texts[start:start + self.batch_size]]
            enc = self.tokenizer(chunk, padding=self.padding, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                emb = _features(self.model.get_text_features(**enc)).float()  # (n, D)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            out.extend((100.0 * emb @ image_embedding.to(emb.device)).tolist())
        return out


def _features(output):
    """transformers 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output




def load_clip(path: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """Load an image-text scorer (CLIP or SigLIP) and its processor: returns (model, processor).

    Raises:
        InputError: missing path, unloadable checkpoint, or a model without get_image/text_features.
    """
    from transformers import AutoModel, AutoProcessor

    check_model_path(path, "reward.clip_path")
    path = str(Path(path).expanduser()) if path.startswith("~") else path
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loading failure is one line for the user, never a traceback
        raise InputError(f"reward.clip_path: cannot load {path} ({one_line(exc)})") from None
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise InputError(f"reward.clip_path: {path} is a {type(model).__name__}, not an image-text model")
    model.to(device).eval()
    return model, processor
