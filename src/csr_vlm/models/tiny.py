"""Tiny random-weight vision-language models and CLIP scorers, built from configs with nothing downloaded.

`csr models build-tiny --out DIR [--family llava|gemma3] [--seed N]` writes DIR/policy and DIR/clip.
The policy keeps the real family's layout (LLaVA-1.5: LlavaForConditionalGeneration, vision
feature layer -2, "default" selection, image token, chat template in the processor; Gemma3:
SigLIP tower, pooled image tokens, turn-based template), so every code path that runs on
llava-hf/llava-1.5-7b-hf runs here too, in a fraction of a second. The CLIP's vision tower has the
policy's geometry (image size, patch size). Tokenizers are byte-level BPE trained locally; '.' is
a single token and the CLIP tokenizer appends an EOS whose id is not 2, so CLIP pools on it.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llava", "gemma3")

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
]

LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def train_bpe(corpus: list[str], special: list[str], vocab_size: int = 400, post: str | None = None):
    """A byte-level BPE tokenizer trained on `corpus` (specials first, in the given order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    if post:
        names = [w for w in post.split() if w.startswith("<")]
        tok.post_processor = processors.TemplateProcessing(
            single=post, special_tokens=[(n, tok.token_to_id(n)) for n in dict.fromkeys(names)]
        )
    return tok


def _wrap(tok, **kwargs):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_llava(image_size: int = 64, patch_size: int = 8, text_hidden: int = 64, text_layers: int = 2,
                vision_hidden: int = 64, vision_layers: int = 2, corpus: list[str] | None = None):
    """A LLaVA-1.5-layout model + processor (vision_feature_layer -2, "default" selection)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    special = ["<unk>", "<pad>", "<s>", "<image>", "</s>"]
    tok = _wrap(train_bpe(corpus or CORPUS, special, post="<s> $A"), bos_token="<s>", eos_token="</s>",
                unk_token="<unk>", pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    tok.chat_template = LLAVA_TEMPLATE
    n_patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                                       num_hidden_layers=vision_layers, num_attention_heads=4,
                                       intermediate_size=2 * vision_hidden, projection_dim=vision_hidden),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=text_hidden, num_hidden_layers=text_layers,
                                num_attention_heads=4, num_key_value_heads=4, intermediate_size=2 * text_hidden,
                                max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=n_patches,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tok.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    set_generation_ids(model, tok)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return model, processor


def build_gemma3(image_size: int = 64, patch_size: int = 8, text_hidden: int = 64, text_layers: int = 2,
                 vision_hidden: int = 64, vision_layers: int = 2, corpus: list[str] | None = None):
    """A Gemma3-layout model + processor (SigLIP tower, 16 pooled image tokens, turn template)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
               "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = _wrap(train_bpe(corpus or CORPUS, special), bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                pad_token="<pad>", extra_special_tokens={"image_token": "<image_soft_token>",
                                                         "boi_token": "<start_of_image>",
                                                         "eoi_token": "<end_of_image>"})
    tok.chat_template = GEMMA3_TEMPLATE
    mm_tokens = 16
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=text_hidden, num_hidden_layers=text_layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=text_hidden // 4,
                         intermediate_size=2 * text_hidden, max_position_embeddings=2048, sliding_window=512),
        vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                           num_hidden_layers=vision_layers, num_attention_heads=4,
                           intermediate_size=2 * vision_hidden),
        mm_tokens_per_image=mm_tokens,
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")],
        pad_token_id=tok.pad_token_id,
    )
    model = Gemma3ForConditionalGeneration(config)
    set_generation_ids(model, tok, extra_eos=[tok.convert_tokens_to_ids("<end_of_turn>")])
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(image_processor=image_processor,
                                tokenizer=tok, chat_template=GEMMA3_TEMPLATE, image_seq_length=mm_tokens)
    return model, processor


def build_clip(image_size: int = 64, patch_size: int = 8, hidden: int = 64, layers: int = 2, projection_dim: int = 32,
               corpus: list[str] | None = None, max_text_len: int = 77):
    """A CLIPModel + CLIPProcessor whose tokenizer appends an EOS that is not id 2 (CLIP pools on it)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    special = ["<unk>", "<pad>", "<s>", "<image>", "</s>"]
    tok = _wrap(train_bpe(corpus or CORPUS, special, post="<s> $A </s>"), bos_token="<s>", eos_token="</s>",
                unk_token="<unk>", pad_token="<pad>", model_max_length=max_text_len)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=2 * hidden, max_position_embeddings=max_text_len,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=2 * hidden),
        projection_dim=projection_dim,
    )
    model = CLIPModel(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def set_generation_ids(model, tok, extra_eos: list[int] = ()) -> None:
    """bos/pad/eos ids of the generation config from the tokenizer (plus any extra end-of-turn ids)."""
    gen = model.generation_config
    gen.bos_token_id = tok.bos_token_id
    gen.pad_token_id = tok.pad_token_id
    gen.eos_token_id = [tok.eos_token_id, *extra_eos] if extra_eos else tok.eos_token_id


def write_sample_prompts(out: Path, n: int = 8, seed: int = 0) -> Path:
    """Write OUT/images/*.png (coloured boxes on noise) and OUT/prompts.jsonl for smoke runs."""
    import json
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
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


def build_tiny(out: str | Path, family: str = "llava", seed: int = 0) -> Path:
    """Write OUT/policy and OUT/clip (random weights, seeded), plus sample prompts; return OUT."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    out = Path(out)
    torch.manual_seed(seed)
    model, processor = (build_llava if family == "llava" else build_gemma3)()
    clip, clip_processor = build_clip()
    for name, m, p in (("policy", model, processor), ("clip", clip, clip_processor)):
        target = out / name
        tmp = out / f".{name}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        m.save_pretrained(tmp)
        p.save_pretrained(tmp)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)
    write_sample_prompts(out, seed=seed)
    return out
