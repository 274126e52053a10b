"""The policy: `model.path` loaded with transformers' Auto classes, the same way for every family.

The policy is whatever `AutoModelForImageTextToText` + `AutoProcessor` load (LLaVA-1.5, Gemma 3,
...); prompts are built with the processor's own chat template and the sentence-delimiter token
ids are looked up in the tokenizer, so no conversation template or token id is hard-coded. Works
offline from local directories exactly as with hub ids.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..schema import ModelConfig

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> str:
    """"auto" -> cuda when a GPU is visible, else cpu; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    """The torch dtype of model.dtype on `device` ("auto": bfloat16 on cuda, float32 elsewhere)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise InputError(f"model.dtype: unknown dtype {dtype!r} (use auto, float32, bfloat16, float16)") from None


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def check_model_path(path: str, key: str) -> None:
    """Refuse an empty path, or a local-looking path that does not exist, with a one-line error."""
    if not path:
        raise InputError(f"{key} is not set")
    p = Path(path)
    looks_local = path.startswith((".", "/", "~")) or p.exists() or path.count("/") != 1
    if looks_local and not p.expanduser().is_dir():
        raise InputError(f"{key}: no model directory at {path}")
    if p.is_dir() and not (p / "config.json").is_file():
        raise InputError(f"{key}: {path} has no config.json (not a Hugging Face checkpoint)")


@dataclass
class Policy:
    """A loaded vision-language model with its processor, and the few things CSR asks of it."""

    model: Any
    processor: Any
    path: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self):
        return self.model.device

    def prompt_text(self, question: str, answer: str | None = None) -> str:
        """The chat-template text for one image + question (and, optionally, an answer so far)."""
        return chat_prompt(self.processor, question, answer)

    @cached_property
    def context_length(self) -> int | None:
        """The most positions the language model takes (its max_position_embeddings), None when it does not say."""
        n = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return n if isinstance(n, int) and n > 0 else None

    def prompt_length(self, image, question: str) -> int:
        """Tokens of one image + question prompt as the model sees it (image tokens included)."""
        return int(self.encode([image], [question])["input_ids"].shape[1])

    def encode(self, images: list, questions: list[str]):
        """Batch image + question prompts, left-padded, on the model's device."""
        tok = self.tokenizer
        tok.padding_side = "left"
        texts = [self.prompt_text(q) for q in questions]
        batch = self.processor(images=[[im] for im in images], text=texts, return_tensors="pt", padding=True)
        return batch.to(self.device)

    @cached_property
    def eos_ids(self) -> list[int]:
        return eos_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))

    def delimiter_ids(self, delimiters: list[str]) -> list[int]:
        """Token ids whose text ends a sentence under the token rule: a delimiter with only whitespace after it."""
        return sentence_end_ids(self.tokenizer, delimiters)

    def boundaries(self, delimiters: list[str], rule: str = "text"):
        """Where sentences end under this tokenizer (search/boundaries.py), worked out once per delimiter list."""
        key = (tuple(delimiters), rule)
        if key not in self._boundaries:
            from ..search.boundaries import SentenceBoundaries

            self._boundaries[key] = SentenceBoundaries.build(self.tokenizer, delimiters, self.eos_ids, rule)
        return self._boundaries[key]

    @cached_property
    def _boundaries(self) -> dict:
        return {}

    @cached_property
    def vocab_rows(self) -> int:
        """Rows of the output layer (may exceed the tokenizer: Qwen's 151,936 rows for 151,665 tokens)."""
        head = self.model.get_output_embeddings()
        if head is not None:
            return int(head.weight.shape[0])
        return int(self.model.config.get_text_config().vocab_size)

    def suppressed_ids(self) -> list[int]:
        """Tokens a sampled answer must never contain: special tokens (image, pad, bos, ...; EOS excluded), added
        control tokens, and the output rows past the tokenizer."""
        return suppressed_token_ids(self.tokenizer, self.eos_ids, self.vocab_rows)

    def generate_answers(self, images: list, questions: list[str], max_new_tokens: int,
                         too_long: dict[int, str] | None = None) -> list[str | None]:
        """Greedy answers for a batch of image + question prompts.

        A prompt whose tokens plus max_new_tokens exceed the model's context gets None instead of an answer,
        and too_long[i] (when given) says why with the numbers; the other prompts are answered as usual.
        """
        import torch

        batch = self.encode(images, questions)
        lengths = batch["attention_mask"].sum(1).tolist()
        limit = self.context_length
        over = [i for i, n in enumerate(lengths) if limit is not None and n + max_new_tokens > limit]
        if over:
            for i in over:
                reason = (f"prompt too long ({lengths[i]} tokens with the image + {max_new_tokens} answer tokens > "
                          f"the model's context of {limit})")
                if too_long is not None:
                    too_long[i] = reason
            fit = [i for i in range(len(questions)) if i not in over]
            answers = self.generate_answers([images[i] for i in fit], [questions[i] for i in fit], max_new_tokens) \
                if fit else []
            out: list[str | None] = [None] * len(questions)
            for i, answer in zip(fit, answers):
                out[i] = answer
            return out
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.eos_ids,
                suppress_tokens=self.suppressed_ids() or None,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def chat_prompt(processor, question: str, answer: str | None = None) -> str:
    """The processor's chat-template text for one image + question (and, optionally, an answer so far)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + answer if answer else text


def eos_token_ids(tokenizer, generation_config) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS and the generation config's eos_token_id(s)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def suppressed_token_ids(tokenizer, eos_ids: list[int], vocab_rows: int | None = None) -> list[int]:
    """Tokens a sampled answer must never contain, the EOS tokens excepted: special tokens (image, pad, bos, ...),
    added tokens that are not special but are no text either (Qwen's `<tool_call>`, `<|fim_prefix|>`: markup in
    angle brackets), and the output rows from len(tokenizer) up to `vocab_rows` (ids no tokenizer can decode)."""
    eos = set(eos_ids)
    added = {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items()
             if _CONTROL_TOKEN.fullmatch(str(token))}
    past = range(len(tokenizer), vocab_rows) if vocab_rows else ()
    return sorted((set(tokenizer.all_special_ids) | added | set(past)) - eos)


_CONTROL_TOKEN = re.compile(r"<[^<>\s]+>|\[[A-Z_]+\d*\]")
"""An added token that is markup, not text: `<tool_call>`, `<|fim_pad|>`, `<end_of_turn>`, `[IMG]`."""


def sentence_end_ids(tokenizer, delimiters: list[str]) -> list[int]:
    """The tokens that end a sentence under the official token rule (search/boundaries.py, `search.boundary=token`)."""
    from ..search.boundaries import SentenceBoundaries

    return SentenceBoundaries.build(tokenizer, delimiters, [], "token").stop_ids


def load_policy(cfg: ModelConfig, path: str | None = None, device: str | None = None) -> Policy:
    """Load the policy with AutoModelForImageTextToText + AutoProcessor.

    Args:
        cfg: the model section. path: load this instead of cfg.path. device: put it here instead of
            cfg.device (e.g. one GPU per rank).
    Raises:
        InputError: the path is missing or not a loadable checkpoint (one line, no traceback).
    """
    from transformers import AutoModelForImageTextToText

    from .processors import load_processor

    path = path or cfg.path
    check_model_path(path, "model.path")
    path = str(Path(path).expanduser()) if path.startswith("~") else path
    device = resolve_device(device or cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        processor = load_processor(path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any loading failure is one line for the user, never a traceback
        raise InputError(f"model.path: cannot load {path} ({one_line(exc)})") from None
    if getattr(processor, "tokenizer", None) is None or not getattr(processor, "chat_template", None):
        raise InputError(f"model.path: {path} has no processor with a tokenizer and a chat template")
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    if not any(p.is_meta for p in model.parameters()):  # FSDP's rank-0 loading: the other ranks hold no weights
        model.to(device)
    model.eval()
    return Policy(model=model, processor=processor, path=str(path))
