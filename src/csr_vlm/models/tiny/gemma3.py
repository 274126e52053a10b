"""Tiny Gemma 3 layout: SigLIP tower, 16 pooled image tokens, the turn-based template, Gemma 3 text model."""

from __future__ import annotations

from .common import CORPUS, TEXT, set_generation_ids, train_bpe, wrap

GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)



def build_gemma3(image_size: int = 64, patch_size: int = 8, text_hidden: int = 128, text_layers: int = 2,
                 vision_hidden: int = 64, vision_layers: int = 2):
    """A Gemma3-layout model + processor (SigLIP tower, 16 pooled image tokens, turn template)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
               "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = wrap(train_bpe(CORPUS, special), bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                pad_token="<pad>", extra_special_tokens={"image_token": "<image_soft_token>",
                                                         "boi_token": "<start_of_image>",
                                                         "eoi_token": "<end_of_image>"})
    tok.chat_template = GEMMA3_TEMPLATE
    mm_tokens = 16
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tok), **{**TEXT, "hidden_size": text_hidden, "num_hidden_layers": text_layers,
                                                 "intermediate_size": 2 * text_hidden},
                         head_dim=text_hidden // 4, sliding_window=512),
        vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                           num_hidden_layers=vision_layers, num_attention_heads=2,
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
