"""Tiny Idefics3 (SmolVLM) layout: a SigLIP-style tower on 64-px tiles, pixel shuffle, image splitting, Llama text."""

from __future__ import annotations

from .common import CORPUS, TEXT, set_generation_ids, train_bpe, wrap

IDEFICS3_ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
IDEFICS3_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>",
                    "<fake_token_around_image>", "<image>", "<global-img>", *IDEFICS3_ROW_COL]

# SmolVLM-Instruct template: '<|im_start|>User:<image>Describe.<end_of_utterance>\nAssistant:'
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics3():
    """SmolVLM layout (model_type idefics3): SigLIP-style tower on 64-px tiles (patch 8), pixel shuffle x2
    (16 tokens per tile), images split into up to 2x2 tiles + a global view, Llama text model."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tile, patch, scale = 64, 8, 2
    tok = wrap(train_bpe(CORPUS, IDEFICS3_SPECIAL), bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                extra_special_tokens={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                      "global_image_token": "<global-img>",
                                      "end_of_utterance_token": "<end_of_utterance>"})
    tok.chat_template = IDEFICS3_TEMPLATE
    ids = tok.convert_tokens_to_ids
    config = Idefics3Config(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=tile, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=len(tok), **TEXT, rope_theta=100000.0,
                         bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<end_of_utterance>"),
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        scale_factor=scale, image_token_id=ids("<image>"), tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config)
    set_generation_ids(model, tok, extra_eos=[ids("<|im_end|>")])
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile},
                                                do_image_splitting=True)
    image_seq_len = (tile // patch) ** 2 // scale ** 2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len,
                                  chat_template=IDEFICS3_TEMPLATE)
    return model, processor
