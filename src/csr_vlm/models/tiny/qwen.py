"""Tiny Qwen2.5-VL and Qwen3-VL layouts: windowed / deepstack ViTs with 2x2 patch merging and M-RoPE text models.

Their processors hold a video processor that needs torchvision; where it is missing the processor is
built without it (models/processors.py) and saved exactly as the full one is, so the folder loads as
the real class on any machine with torchvision. Images are resized to a fixed number of pixels (min =
max), so a square image gives 16 image tokens.
"""

from __future__ import annotations

from .common import CORPUS, TEXT, train_bpe, wrap
from .qwen_vocab import QWEN_ROWS

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL / Qwen2.5-VL instruct template (default system prompt, vision placeholders inline).
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL instruct template, without the tool-calling branches: no default system prompt.
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)




def _qwen_tokenizer(template: str, real_vocab: bool = False):
    """The tiny BPE (400 tokens) or, with real_vocab, Qwen's own vocabulary (qwen_vocab.py)."""
    if real_vocab:
        from .qwen_vocab import qwen_tokenizer

        return qwen_tokenizer(template)
    tok = wrap(train_bpe(CORPUS, QWEN_SPECIAL), eos_token="<|im_end|>", pad_token="<|endoftext|>",
               extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                     "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    tok.chat_template = template
    return tok


# What transformers' Qwen video processors write into processor_config.json (their to_dict()), for our
# image geometry: written from a dict so that a folder saved without torchvision is the folder a full
# processor writes.
def _qwen_video_settings(family: str, pixels: int) -> dict:
    common = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "max_frames": 768, "merge_size": 2, "min_frames": 4, "resample": 3,
              "rescale_factor": 0.00392156862745098, "return_metadata": False,
              "size": {"longest_edge": pixels, "shortest_edge": pixels}, "temporal_patch_size": 2}
    if family == "qwen2_5_vl":
        return {**common, "do_sample_frames": False, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "max_video_tokens": 128000, "patch_size": 14,
                "video_processor_type": "Qwen2VLVideoProcessor"}
    return {**common, "do_sample_frames": True, "fps": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "max_video_tokens": 768, "patch_size": 16, "video_processor_type": "Qwen3VLVideoProcessor"}



def _qwen_processor(family: str, image_processor, tok, template: str, pixels: int):
    """The real processor where torchvision is installed, else the same one for images and text only."""
    import transformers
    from transformers.utils import is_torchvision_available

    from ..processors import images_only_class

    name = "Qwen2_5_VLProcessor" if family == "qwen2_5_vl" else "Qwen3VLProcessor"
    settings = _qwen_video_settings(family, pixels)
    if is_torchvision_available():
        video = getattr(transformers, settings.pop("video_processor_type"))(**settings)
        return getattr(transformers, name)(image_processor=image_processor, tokenizer=tok, video_processor=video,
                                           chat_template=template)
    processor = images_only_class(name)(image_processor=image_processor, tokenizer=tok, chat_template=template)
    processor.video_settings = settings
    return processor


def _generation_ids(model, tok) -> None:
    ids = tok.convert_tokens_to_ids
    gen = model.generation_config
    gen.bos_token_id, gen.pad_token_id = ids("<|endoftext|>"), tok.pad_token_id
    gen.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]


def build_qwen2_5_vl(real_vocab: bool = False):
    """Qwen2.5-VL layout: windowed ViT (patch 14, 2x2 merge), M-RoPE text model, 16 image tokens per image."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _qwen_tokenizer(QWEN2_5_VL_TEMPLATE, real_vocab)
    ids = tok.convert_tokens_to_ids
    pixels = 112 * 112  # every image becomes 112x112: an 8x8 patch grid, 4x4 = 16 merged image tokens
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=QWEN_ROWS if real_vocab else len(tok), **TEXT, rope_parameters={
            "rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},  # sums to head_dim/2
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1], out_hidden_size=TEXT["hidden_size"]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    _generation_ids(model, tok)
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               min_pixels=pixels, max_pixels=pixels)
    return model, _qwen_processor("qwen2_5_vl", image_processor, tok, QWEN2_5_VL_TEMPLATE, pixels)


def build_qwen3_vl(real_vocab: bool = False):
    """Qwen3-VL layout: ViT with learned position grid + deepstack (patch 16, 2x2 merge), interleaved M-RoPE."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _qwen_tokenizer(QWEN3_VL_TEMPLATE, real_vocab)
    ids = tok.convert_tokens_to_ids
    pixels = 128 * 128  # an 8x8 grid of 16-px patches, 16 merged image tokens
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=QWEN_ROWS if real_vocab else len(tok), **TEXT, head_dim=32, rope_parameters={
            "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True},
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[1], out_hidden_size=TEXT["hidden_size"]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    model = Qwen3VLForConditionalGeneration(config)
    _generation_ids(model, tok)
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=pixels, max_pixels=pixels,
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return model, _qwen_processor("qwen3_vl", image_processor, tok, QWEN3_VL_TEMPLATE, pixels)
