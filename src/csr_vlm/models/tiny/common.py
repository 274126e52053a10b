"""What every tiny family shares: the corpus, byte-level BPE tokenizers trained here, the CLIP scorer, sample data."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "there is a red circle on the left.",
    "a blue square is next to the table.",
    "i see a dog and a cat on the grass!",
    "a man is riding a bicycle down the street.",
    "two people are sitting on a bench near a tree.",
    "is there a car in the image? yes.",
    "is there a person in the image? no.",
    "the image shows a kitchen with a sink, an oven and a refrigerator.",
    "a plate of food with pizza, a fork and a knife.",
    "a train is stopped at the station under a cloudy sky.",
    "please describe this image in detail.",
    "what do you see happening in this image?",
    "a green triangle and a yellow cross are here.",
    "a white tee, a purple frame and a blue ring.",
    "You are a helpful assistant.",
    "system user assistant User Assistant",
]

TEXT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=256, max_position_embeddings=2048, initializer_range=0.1)
"""The text model of every family: head_dim 128 / 4 = 32; std 0.1 weights (0.02 gives near-flat logits, under which
greedy tokens hide a wrong position)."""


def train_bpe(corpus: list[str], special: list[str], vocab_size: int = 400, post: str | None = None):
    """A byte-level BPE tokenizer trained on `corpus` (specials first, in the given order); `post` is a
    TemplateProcessing pattern such as "<s> $A"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in special else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    if post:
        names = [w for w in post.split() if w.startswith("<")]
        tok.post_processor = processors.TemplateProcessing(
            single=post, special_tokens=[(n, tok.token_to_id(n)) for n in dict.fromkeys(names)])
    return tok


def wrap(tok, **kwargs):
    """A transformers fast tokenizer around a `tokenizers` object."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def set_generation_ids(model, tok, extra_eos: list[int] = ()) -> None:
    """bos/pad/eos ids of the generation config from the tokenizer (plus any extra end-of-turn ids)."""
    gen = model.generation_config
    gen.bos_token_id = tok.bos_token_id
    gen.pad_token_id = tok.pad_token_id
    gen.eos_token_id = [tok.eos_token_id, *extra_eos] if extra_eos else tok.eos_token_id


def build_clip(image_size: int = 64, patch_size: int = 8, hidden: int = 64, layers: int = 2, projection_dim: int = 32,
               max_text_len: int = 77):
    """A CLIPModel + CLIPProcessor whose tokenizer appends an EOS that is not id 2 (CLIP pools on it)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    special = ["<unk>", "<pad>", "<s>", "<image>", "</s>"]
    tok = wrap(train_bpe(CORPUS, special, post="<s> $A </s>"), bos_token="<s>", eos_token="</s>",
               unk_token="<unk>", pad_token="<pad>", model_max_length=max_text_len)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=2 * hidden, max_position_embeddings=max_text_len,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=2 * hidden),
        projection_dim=projection_dim,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def write_sample_prompts(out: Path, n: int = 8, seed: int = 0) -> Path:
    """Write OUT/images/*.png (coloured boxes on noise, 64 px) and OUT/prompts.jsonl for smoke runs."""
    import json
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    _seed_pillow_noise(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    questions = ["Describe this image.", "What do you see happening in this image?", "Describe the following image."]
    lines = []
    for i in range(n):
        img = Image.effect_noise((64, 64), 24).convert("RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            x, y = rng.randint(0, 40), rng.randint(0, 40)
            draw.rectangle([x, y, x + 20, y + 20], fill=tuple(rng.randint(0, 255) for _ in range(3)))
        img.save(out / "images" / f"{i:03d}.png")
        lines.append(json.dumps({"id": f"{i:03d}", "image": f"images/{i:03d}.png", "prompt": questions[i % 3]}))
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return out / "prompts.jsonl"


def _seed_pillow_noise(seed: int) -> None:
    """Seed the C library's rand(), which Image.effect_noise draws from: unseeded, the images of a second model built
    in one process differed from the first's (and so did every result on them: a test's outcome hung on which tests ran
    before it). srand(1 + seed) is the state a fresh process starts in for seed 0, so those images are unchanged."""
    import ctypes

    try:
        ctypes.CDLL(None).srand(1 + seed)
    except (OSError, AttributeError):  # no C library to reach (not Linux/macOS): the images stay unseeded
        pass
