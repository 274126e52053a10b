"""The scorer seam: what the reward asks of an image-text scorer, and the factory `reward.scorer` picks one by.

The reward's image term R_I (reward.py) is one number per (image, sentence). A scorer computes it:
once per image whatever it needs (`image_embedding`), then any number of sentences against it in batches
(`score`), and says what it is (`kind`, logged with the run). The search, `csr calibrate` and `csr score
clip` talk to a scorer only through this interface, as the search talks to a model only through
search/engine.py. A new kind of scorer (an open-vocabulary detector, a VQA verifier) is one module
defining a class with these members plus one `register(...)` line below:

    register("clip", _clip)          # name -> factory(ScorerSpec) -> Scorer

    scorer = build_scorer(ScorerSpec("clip", "openai/clip-vit-large-patch14-336", device="cuda"))
    scorer.score(scorer.image_embedding(pil_image), ["A dog on the grass.", "A red car."])   # [23.1, 17.4]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .coerce import check_choice


class Scorer(Protocol):
    """An image-text scorer: R_I of sentences about one image, on the scale that reward.tau and normalize use."""

    kind: str
    """The registered name of this kind of scorer ("clip")."""

    def image_embedding(self, image: Any) -> Any:
        """What the scorer keeps of one PIL image, computed once and passed back to `score`."""

    def score(self, image_embedding: Any, texts: Sequence[str]) -> list[float]:
        """One raw score per text against the image (batched inside; no clamp, no normalisation)."""


@dataclass(frozen=True)
class ScorerSpec:
    """What a factory needs: the kind (reward.scorer), its checkpoint (reward.clip_path), device, dtype, batch."""

    kind: str = "clip"
    path: str = ""
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 64


SCORERS: dict[str, Callable[[ScorerSpec], Scorer]] = {}


def register(kind: str, factory: Callable[[ScorerSpec], Scorer]) -> None:
    """Make `reward.scorer=<kind>` build its scorer with factory(spec)."""
    SCORERS[kind] = factory


def build_scorer(spec: ScorerSpec) -> Scorer:
    """The scorer spec.kind names, loaded (a ConfigError lists the registered kinds)."""
    check_choice("reward.scorer", spec.kind, tuple(SCORERS))
    return SCORERS[spec.kind](spec)


def check_kind(kind: str) -> None:
    """A ConfigError naming reward.scorer unless `kind` is registered (config.validate calls it)."""
    check_choice("reward.scorer", kind, tuple(SCORERS))


def _clip(spec: ScorerSpec) -> Scorer:
    from .models.clip import ClipScorer  # torch and transformers load only when a scorer is built

    return ClipScorer(spec.path, device=spec.device, dtype=spec.dtype, batch_size=spec.batch_size)


register("clip", _clip)
