"""Append-in-place key/value cache layers for the search's token loop.

transformers' `DynamicLayer.update` appends a token with `torch.cat`, which copies the layer's whole
cache (rows x (image prefix + answer so far)) at every generated token. `GrowingLayer` keeps the
keys/values in buffers with spare capacity, writes each new token in place and exposes views of the
filled part, so a token costs O(rows) to store. A buffer is reallocated (geometric growth) only when it
is full or when `keys` is no longer a prefix view of it: after `batch_repeat_interleave` or
`batch_select_indices` (which copy anyway) or after a stacking of caches; `crop` stays a view.

`SharedPrefixLayer` also keeps the prefilled image + prompt keys/values once per prompt instead of once per
row: its `keys`/`values` hold only what came after the prefill (the rows' own suffixes) and `owner` says
which prompt each row belongs to. `shared_prefix_attention` (registered as the attention implementation
`SHARED_PREFIX`, switched on around a forward by `shared_prefix_mode(model, cache)`) attends each row to its
prompt's prefix and to its own suffix in one softmax; for one prompt the prefix is read once per step for
all rows instead of once per row. Tensors of other layers take the plain SDPA path.

`install(cache, model)` swaps every plain `DynamicLayer` of a prefilled cache for a `SharedPrefixLayer`
holding the same tensors as its prefix (a `GrowingLayer` when the model does not run SDPA attention);
other layer types (sliding-window, static, quantized) are left as they are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

MIN_SPARE = 32  # spare token slots of a fresh buffer
GROWTH = 0.25  # ... or this fraction of the tokens it holds, whichever is more


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views `buffer[..., :n, :]` of buffers with spare capacity."""

    @classmethod
    def from_layer(cls, layer: DynamicLayer) -> GrowingLayer:
        new = cls()
        new.__dict__.update(layer.__dict__)
        new._kbuf = new._vbuf = None
        return new

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.numel() else 0
        end = n + key_states.shape[-2]
        if not self._fits(key_states, end):
            self._reallocate(key_states, value_states, n, end)
        self._kbuf[..., n:end, :] = key_states
        self._vbuf[..., n:end, :] = value_states
        self.keys, self.values = self._kbuf[..., :end, :], self._vbuf[..., :end, :]
        return self.keys, self.values

    def _fits(self, key_states: torch.Tensor, end: int) -> bool:
        """True when `keys` is still a prefix view of the buffer and the buffer has room up to `end`."""
        kb = getattr(self, "_kbuf", None)
        return (kb is not None and self.keys.numel() > 0 and self.keys.data_ptr() == kb.data_ptr()
                and self.keys.shape[:2] == kb.shape[:2] == key_states.shape[:2]
                and self.keys.stride() == kb.stride() and self.values.data_ptr() == self._vbuf.data_ptr()
                and kb.shape[-2] >= end)

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, n: int, end: int) -> None:
        capacity = end + max(MIN_SPARE, int(end * GROWTH))
        kshape, vshape = list(key_states.shape), list(value_states.shape)
        kshape[-2] = vshape[-2] = capacity
        kb, vb = key_states.new_empty(kshape), value_states.new_empty(vshape)
        if n:
            kb[..., :n, :] = self.keys
            vb[..., :n, :] = self.values
        self._kbuf, self._vbuf = kb, vb


class SharedPrefixLayer(GrowingLayer):
    """Prefix keys/values once per prompt (`prefix_k`: prompts x heads x W x dim) + per-row suffix buffers."""

    @classmethod
    def from_layer(cls, layer: DynamicLayer) -> SharedPrefixLayer:
        new = super().from_layer(layer)
        new.set_prefix(layer.keys, layer.values)
        return new

    def set_prefix(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make `keys`/`values` (one row per prompt) the shared prefix; every row starts with an empty suffix."""
        self.prefix_k, self.prefix_v = keys, values
        self.keys, self.values = keys[..., :0, :], values[..., :0, :]
        self._kbuf = self._vbuf = None
        self.owner = list(range(keys.shape[0]))

    @property
    def prefix_len(self) -> int:
        return self.prefix_k.shape[-2]

    def blocks(self) -> list[tuple[int, int, int]]:
        """(prompt, first row, end row) of each run of consecutive rows that share a prompt."""
        out = []
        for r, p in enumerate(self.owner):
            if out and out[-1][0] == p:
                out[-1][2] = r + 1
            else:
                out.append([p, r, r + 1])
        return [tuple(b) for b in out]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        keys._csr_prefix_layer = self  # read by shared_prefix_attention
        return keys, values

    def get_seq_length(self) -> int:
        return self.prefix_len + self.keys.shape[-2]

    def crop(self, tokens_to_remove: int) -> None:
        if -tokens_to_remove > self.keys.shape[-2]:
            raise ValueError("cannot crop into the shared prefix")
        super().crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.keys = self.keys.repeat_interleave(repeats, dim=0)
        self.values = self.values.repeat_interleave(repeats, dim=0)
        self.owner = [p for p in self.owner for _ in range(repeats)]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]
        self.owner = [self.owner[i] for i in indices.tolist()]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


SHARED_PREFIX = "csr_shared_prefix"


def shared_prefix_attention(  # noqa: PLR0913 - the signature transformers calls an attention function with
        module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
        dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of each row over [its prompt's shared prefix, its own suffix]; other layers use SDPA.

    query (rows, H, q, d); key/value (rows, Hk, S, d) suffixes; mask (rows, 1, q, W + S), bool or additive.
    Scores against the prefix are one matmul per prompt over all its rows' queries (the prefix is read
    once); both parts go through one float32 softmax, as in eager attention.
    """
    layer = getattr(key, "_csr_prefix_layer", None)
    if layer is None or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, q, dim = query.shape
    kv_heads, width = key.shape[1], layer.prefix_len
    gq = heads // kv_heads * q  # query vectors per key/value head and row
    qg = query.reshape(rows, kv_heads, gq, dim)
    scale = scaling if scaling is not None else dim ** -0.5
    pre = query.new_empty(rows, kv_heads, gq, width)
    for p, a, b in layer.blocks():
        qp = qg[a:b].transpose(0, 1).reshape(kv_heads, (b - a) * gq, dim)
        pre[a:b] = (qp @ layer.prefix_k[p].transpose(-1, -2)).view(kv_heads, b - a, gq, width).transpose(0, 1)
    scores = torch.cat([pre, qg @ key.transpose(-1, -2)], dim=-1).mul_(scale).view(rows, heads, q, -1).float()
    if attention_mask is not None:
        mask = attention_mask[..., : scores.shape[-1]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).to(query.dtype).view(rows, kv_heads, gq, -1)
    out = probs[..., width:] @ value
    for p, a, b in layer.blocks():
        pp = probs[a:b, ..., :width].transpose(0, 1).reshape(kv_heads, (b - a) * gq, width)
        out[a:b] += (pp @ layer.prefix_v[p]).view(kv_heads, b - a, gq, dim).transpose(0, 1)
    return out.view(rows, heads, q, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(SHARED_PREFIX, shared_prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(SHARED_PREFIX, sdpa_mask)


def _configs(config) -> list:
    out = [config]
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None:
            out += _configs(sub)
    return out


@contextmanager
def shared_prefix_mode(model, cache):
    """Use `shared_prefix_attention` in `model` (and its sub-models) during the block, if `cache` shares prefixes."""
    if not any(isinstance(layer, SharedPrefixLayer) for layer in getattr(cache, "layers", ())):
        yield
        return
    configs = _configs(model.config)
    saved = [c._attn_implementation_internal for c in configs]
    for c in configs:
        c._attn_implementation_internal = SHARED_PREFIX
    try:
        yield
    finally:
        for c, impl in zip(configs, saved):
            c._attn_implementation_internal = impl


def install(cache, model) -> None:
    """Replace each plain `DynamicLayer` of `cache` (a prefilled transformers Cache) by a `SharedPrefixLayer`.

    Only a model that runs SDPA attention shares prefixes (the shared path uses SDPA's boolean masks and
    falls back to SDPA); with any other attention implementation the layers become `GrowingLayer`s.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    shared = model.config.get_text_config()._attn_implementation == "sdpa"
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[i] = (SharedPrefixLayer if shared else GrowingLayer).from_layer(layer)
