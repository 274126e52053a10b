"""The toy world's tokenizer and tiny CLIP: contrastive training on fresh scenes, calibration statistics.

The tokenizer is word-level over the world's words (lower-cased, '.' and '?' single tokens), so
the text a stage decodes re-tokenizes to the same ids whatever its spacing; the CLIP variant
appends `</s>` (id 4, not 2) for EOS pooling. The CLIP (~0.7M parameters, 48 px, patch 6; the quick
world's: 2 layers, patch 8) is trained with a sigmoid (SigLIP-style) loss over in-batch (image, sentence)
pairs plus 2x the same loss of each image against the 10 type sentences, plus 1x against 32 sentences naming no object
(toyworld.garbled_sentence: the malformed "i see a is here ." kind DPO rounds drift into, which an
untrained-on CLIP scored arbitrarily), on scenes drawn on the fly from the world seed.
(The prototype's multi-positive softmax lets an image match ONE of its objects and ignore the
others: true-sentence scores came out bimodal, AUC 0.88. Independent sigmoids score every present
object high, which is what a threshold tau needs.) Calibration on the calib split reports
tau = mean(true) - 3 sd(true) and the Youden cut configs/toy.yaml uses.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from pathlib import Path

import numpy as np

from ..calibration import auc, pick_tau
from ..data import read_jsonl
from . import scenes as tw

log = logging.getLogger(__name__)

SPECIAL = ["<unk>", "<pad>", "<s>", "<image>", "</s>"]
MEAN = STD = [0.5, 0.5, 0.5]


def make_tokenizer(clip: bool):
    """Word-level tokenizer; clip=True appends </s> (CLIP pools on it), else only <s> is prepended."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in tw.corpus() for w in re.findall(r"\w+|[^\w\s]+", line.lower())})
    vocab = {t: i for i, t in enumerate(SPECIAL + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = "<s> $A </s>" if clip else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    kwargs = {"model_max_length": 32} if clip else {"extra_special_tokens": {"image_token": "<image>"}}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", **kwargs)


def image_processor(size: int):
    """The CLIP image processor of the world (PIL backend, mean = std = 0.5, no resize at model size)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=MEAN, image_std=STD)


def pixels(images: list):
    """The processor's pixel_values for images already at model size: (x/255 - 0.5) / 0.5, NCHW."""
    import torch

    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    return torch.from_numpy((arr - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()


def build_clip(size: int = 48, patch: int = 6, layers: int = 3):
    """An untrained tiny CLIPModel + CLIPProcessor for the world's image size and words (vision: `layers` layers
    over patches of `patch` pixels)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tok = make_tokenizer(clip=True)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=size, patch_size=patch, hidden_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=256),
        projection_dim=64,
    )
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor(size), tokenizer=tok)


def _embed_text(model, tok, texts: list[str]):
    batch = tok(texts, padding=True, return_tensors="pt")
    return model.get_text_features(**batch).pooler_output


def _sigmoid_loss(logits, pos):
    """Mean binary cross-entropy of every (image, text) logit against "the text's object is in the image"."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits, pos.float())


def clip_batch(rng: random.Random, nrng, p, n: int):
    """n fresh scenes: (images, types per image, the type each text names, texts)."""
    scenes = [tw.sample_scene(rng, p) for _ in range(n)]
    images = [tw.render(s, nrng, p.image_size) for s in scenes]
    types = [[o["type"] for o in s] for s in scenes]
    text_types = [rng.choice(ts) for ts in types]
    texts = [tw.sentence(t, rng) for t in text_types]
    return images, types, text_types, texts


def train_clip(out: Path, p, n_junk: int = 32) -> dict:
    """Train the tiny CLIP, save OUT/clip (model + CLIPProcessor), return calibration statistics."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(p.seed)
    model, processor = build_clip(p.image_size, p.clip_patch, p.clip_layers)
    tok = processor.tokenizer
    rng = random.Random(tw.split_seed(p.seed, "clip-train"))
    nrng = np.random.default_rng(tw.split_seed(p.seed, "clip-train:noise"))
    # SigLIP-style temperature and bias, used in training only (the reward uses plain cosines)
    scale_bias = torch.nn.Parameter(torch.tensor([math.log(10.0), -10.0]))
    opt = torch.optim.AdamW([*model.parameters(), scale_bias], lr=1e-3, weight_decay=0.01)
    n_types = len(tw.TYPES)
    start = time.time()
    from tqdm import tqdm

    for _step in tqdm(range(p.clip_steps), desc="toy CLIP", mininterval=5):
        images, types, text_types, texts = clip_batch(rng, nrng, p, p.clip_batch)
        img = F.normalize(model.get_image_features(pixel_values=pixels(images)).pooler_output, dim=-1)
        txt = F.normalize(_embed_text(model, tok, texts), dim=-1)
        type_txt = F.normalize(_embed_text(model, tok, [tw.sentence(t, rng) for t in range(n_types)]), dim=-1)
        scale, bias = scale_bias[0].clamp(max=4.6).exp(), scale_bias[1]
        pos = torch.tensor([[t in ts for t in text_types] for ts in types])
        onehot = torch.tensor([[t in ts for t in range(n_types)] for ts in types])
        loss = _sigmoid_loss(scale * img @ txt.T + bias, pos)
        loss = loss + 2 * _sigmoid_loss(scale * img @ type_txt.T + bias, onehot)
        if n_junk:
            junk = F.normalize(_embed_text(model, tok, [tw.garbled_sentence(rng) for _ in range(n_junk)]), dim=-1)
            loss = loss + _sigmoid_loss(scale * img @ junk.T + bias, torch.zeros(len(images), n_junk))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model.logit_scale.copy_(scale_bias[0].clamp(max=4.6))
    seconds = time.time() - start
    save_dir = out / "clip"
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    stats = calibration_stats(model, tok, out)
    stats.update({"steps": p.clip_steps, "seconds": round(seconds, 1), "final_loss": round(float(loss.detach()), 4),
                  "params": sum(x.numel() for x in model.parameters())})
    log.info("toy CLIP: %s", stats)
    return stats


def clip_scores(model, tok, images: list, texts: list[str], batch: int = 256) -> np.ndarray:
    """100 * cos(image, text) for aligned lists of PIL images and sentences."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            img = F.normalize(model.get_image_features(pixel_values=pixels(images[i:i + batch])).pooler_output, dim=-1)
            txt = F.normalize(_embed_text(model, tok, texts[i:i + batch]), dim=-1)
            out.append((100 * (img * txt).sum(-1)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def calibration_stats(model, tok, world: Path) -> dict:
    """Scores of the calib split's labelled sentences: means, sds, AUCs and tau = mean(true) - 3 sd."""
    from PIL import Image

    rows = list(read_jsonl(world / "tau_calibration.jsonl", strict=True))
    opened = {path: Image.open(world / path).convert("RGB") for path in {r["image"] for r in rows}}
    images = [opened[r["image"]] for r in rows]
    scores = np.maximum(clip_scores(model, tok, images, [r["text"] for r in rows]), 0)
    rng = random.Random(0)
    junk = np.maximum(clip_scores(model, tok, images, [tw.garbled_sentence(rng) for _ in rows]), 0)
    scenes = {s["image"]: {o["type"] for o in s["objects"]} for s in tw.load_scenes(world, "calib")}
    true = np.array([r["present"] for r in rows])
    is_partner = np.array([not r["present"] and any(tw.type_name(tw.partner(t)) in r["text"]
                                                    for t in scenes[r["image"]] if tw.partner(t) is not None)
                           for r in rows])
    t_scores, f_scores = scores[true], scores[~true]
    tau = pick_tau(t_scores.tolist(), f_scores.tolist(), "true_sd", 3.0)
    youden = pick_tau(t_scores.tolist(), f_scores.tolist(), "youden")
    return {"true_mean": float(t_scores.mean()), "true_sd": float(t_scores.std()),
            "tau_youden": youden, "false_above_tau_youden": float((f_scores >= youden).mean()),
            "true_below_tau_youden": float((t_scores < youden).mean()),
            "false_mean": float(f_scores.mean()), "partner_mean": float(scores[is_partner].mean()),
            "auc_all": auc(t_scores.tolist(), f_scores.tolist()),
            "auc_partner": auc(t_scores.tolist(), scores[is_partner].tolist()), "tau": tau,
            "garbled_mean": float(junk.mean()), "garbled_above_tau": float((junk > tau).mean()),
            "false_above_tau": float((f_scores > tau).mean()), "true_below_tau": float((t_scores < tau).mean())}
