"""kvcache: in-place appends, reallocation points, and shared-prefix attention == SDPA on the full keys."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers.cache_utils import DynamicLayer

from csr_vlm.search.kvcache import GrowingLayer, SharedPrefixLayer, install, shared_prefix_attention


def _layer(rows: int, heads: int, n: int, dim: int = 4) -> DynamicLayer:
    layer = DynamicLayer()
    layer.update(torch.randn(rows, heads, n, dim), torch.randn(rows, heads, n, dim))
    return layer


def test_growing_layer_appends_in_place_and_reallocates_after_copies():
    plain = _layer(2, 3, 5)
    grow = GrowingLayer.from_layer(plain)
    new = [(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)) for _ in range(3)]
    for k, v in new[:2]:
        plain.update(k, v)
        grow.update(k, v)
    # First append reallocates: 5 + 1 = 6 tokens + max(32, 6 // 4) spare = 38 slots; the second is in place.
    assert grow._kbuf.shape[-2] == 38
    assert grow.keys.data_ptr() == grow._kbuf.data_ptr() and grow.keys.shape[-2] == 7
    assert torch.equal(grow.keys, plain.keys) and torch.equal(grow.values, plain.values)
    buf = grow._kbuf
    grow.crop(-2)  # a view: the next token overwrites slot 5 of the same buffer
    plain.crop(-2)
    k, v = new[2]
    grow.update(k, v)
    plain.update(k, v)
    assert grow._kbuf is buf and torch.equal(grow.keys, plain.keys)
    for layer in (grow, plain):  # a copy: the next append reallocates: 6 + 1 = 7 tokens + 32 spare
        layer.batch_repeat_interleave(2)
        layer.update(torch.ones(4, 3, 1, 4), torch.ones(4, 3, 1, 4))
    assert grow._kbuf is not buf and grow._kbuf.shape == (4, 3, 39, 4)
    assert torch.equal(grow.keys, plain.keys) and torch.equal(grow.values, plain.values)


def test_shared_prefix_attention_equals_sdpa_over_full_keys():
    torch.manual_seed(1)
    heads, kv_heads, width, dim = 4, 2, 7, 8
    prefix = _layer(2, kv_heads, width, dim)  # prompt 0 and prompt 1
    shared = SharedPrefixLayer.from_layer(prefix)
    shared.batch_repeat_interleave(3)
    shared.batch_select_indices(torch.tensor([0, 1, 2, 3, 4]))  # rows 0-2: prompt 0, rows 3-4: prompt 1
    assert shared.owner == [0, 0, 0, 1, 1] and shared.blocks() == [(0, 0, 3), (1, 3, 5)]
    for _ in range(3):
        keys, values = shared.update(torch.randn(5, kv_heads, 1, dim), torch.randn(5, kv_heads, 1, dim))
    assert shared.get_seq_length() == width + 3
    mask = torch.ones(5, 1, 1, width + 3, dtype=torch.bool)
    mask[3:, ..., :2] = False  # prompt 1 was left-padded by 2 columns
    mask[1, ..., width + 1] = False  # row 1 has a hole in its suffix
    query = torch.randn(5, heads, 1, dim)
    out, _ = shared_prefix_attention(SimpleNamespace(), query, keys, values, mask, scaling=0.3)
    owner = torch.tensor(shared.owner)
    full_k = torch.cat([prefix.keys[owner], keys], dim=-2).repeat_interleave(heads // kv_heads, dim=1)
    full_v = torch.cat([prefix.values[owner], values], dim=-2).repeat_interleave(heads // kv_heads, dim=1)
    ref = torch.nn.functional.scaled_dot_product_attention(query, full_k, full_v, attn_mask=mask, scale=0.3)
    assert out.shape == (5, 1, heads, dim)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_install_shares_prefixes_only_under_sdpa():
    def model(impl):
        text = SimpleNamespace(_attn_implementation=impl)
        return SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: text))

    for impl, kind in (("sdpa", SharedPrefixLayer), ("eager", GrowingLayer)):
        other = SimpleNamespace()  # not a plain DynamicLayer: left as it is
        cache = SimpleNamespace(layers=[_layer(1, 2, 3), other])
        install(cache, model(impl))
        assert type(cache.layers[0]) is kind and cache.layers[1] is other
