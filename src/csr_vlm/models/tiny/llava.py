"""Tiny LLaVA-1.5 and LLaVA-NeXT layouts: a CLIP vision tower, a projector and a Llama / Mistral text model."""

from __future__ import annotations

from .common import CORPUS, TEXT, set_generation_ids, train_bpe, wrap

LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""llava-1.5's USER: <image>\\n... ASSISTANT: template; string and list content (TRL's plain and conversational
rows)."""

# llava-v1.6-mistral: '<s>[INST] <image>\nDescribe. [/INST]' (BOS from the tokenizer's post-processor)
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> ' }}"
    "{% endif %}{% endfor %}"
)
SPECIAL = ["<unk>", "<pad>", "<s>", "<image>", "</s>"]


def _tokenizer(template: str, corpus: list[str] | None = None):
    tok = wrap(train_bpe(corpus or CORPUS, SPECIAL, post="<s> $A"), bos_token="<s>", eos_token="</s>",
               unk_token="<unk>", pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    tok.chat_template = template
    return tok


def build_llava(image_size: int = 64, patch_size: int = 8, text_hidden: int = 128, text_layers: int = 2,
                vision_hidden: int = 64, vision_layers: int = 2):
    """A LLaVA-1.5-layout model + processor (vision_feature_layer -2, "default" selection, CLS counted, dropped)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _tokenizer(LLAVA_TEMPLATE)
    text = {**TEXT, "hidden_size": text_hidden, "num_hidden_layers": text_layers, "intermediate_size": 2 * text_hidden}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                                       num_hidden_layers=vision_layers, num_attention_heads=2,
                                       intermediate_size=2 * vision_hidden, projection_dim=vision_hidden),
        text_config=LlamaConfig(vocab_size=len(tok), **text, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2, pad_token_id=tok.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    set_generation_ids(model, tok)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return model, processor


def build_llava_next():
    """LLaVA-NeXT (v1.6-mistral) layout: CLIP tower on 32-px tiles (patch 8: 16 patches + CLS), anyres grid
    pinpoints up to 64x64, the image-newline token, a Mistral text model."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tile, patch = 32, 8
    pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    tok = _tokenizer(LLAVA_NEXT_TEMPLATE)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=tile, patch_size=patch, hidden_size=64,
                           intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, projection_dim=64),
        text_config=dict(model_type="mistral", vocab_size=len(tok), **TEXT, sliding_window=None,
                         rope_theta=1000000.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=(tile // patch) ** 2,
        tie_word_embeddings=False,
    )
    model = LlavaNextForConditionalGeneration(config)
    set_generation_ids(model, tok)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile,
                                                                                          "width": tile},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_NEXT_TEMPLATE)
    return model, processor
