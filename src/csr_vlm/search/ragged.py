"""Ragged rows: the token loop forwards only the rows that are still writing their sentence.

Sentences end at different steps. Without this, a row that has finished keeps going through the model as a hole
until the longest sentence of the step ends (1.2-1.5x the tokens that need a forward on the toy world's trees).
`RaggedRows` takes the finished rows out of the key/value cache once they are a quarter of it or more (a copy of
the cache, so not at every step), keeps their keys/values aside, and `restore` puts them back at the end of the
expand, zero-padded on the right. The mask and every per-row tensor of the loop stay full-size: the mask's columns
for a row that left are zeros, exactly as a hole's would be, so after `restore` the state is the one the uncompacted
loop leaves (the keys/values under those zero columns are never read). Sampling still draws for every row, so each
prompt's random numbers are the same as before.

Only caches whose layers all hold every token per row can be compacted (`DynamicLayer` and kvcache.py's layers);
others (sliding windows, Gemma 3) are forwarded whole, as before.
"""

from __future__ import annotations

import torch

from .kvcache import GrowingLayer, SharedPrefixLayer

COMPACT_AT = 0.25
"""Take the finished rows out once they are at least this share of the rows in the cache."""

_COMPACTABLE = ("DynamicLayer", "GrowingLayer", "SharedPrefixLayer")


class RaggedRows:
    """Which of a batch's rows are in the cache (`active`), and the keys/values of those taken out."""

    def __init__(self, cache, rows: int):
        layers = getattr(cache, "layers", None)
        self.enabled = bool(layers) and all(type(layer).__name__ in _COMPACTABLE for layer in layers)
        self.rows = rows
        self.active = list(range(rows))
        self._owner = [list(getattr(layer, "owner", [])) for layer in layers or []]
        self._parked: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self._index: torch.Tensor | None = None

    @property
    def index(self) -> torch.Tensor | None:
        """The batch rows the cache holds, in cache order (None while it holds them all)."""
        return self._index

    def shrink(self, cache, running: list[bool]) -> None:
        """Take the rows that stopped out of the cache when they are COMPACT_AT of it or more."""
        if not self.enabled:
            return
        keep = [i for i, row in enumerate(self.active) if running[row]]
        leaving = len(self.active) - len(keep)
        if leaving == 0 or not keep or leaving < COMPACT_AT * len(self.active):
            return
        device = cache.layers[0].keys.device
        out = torch.tensor([i for i, row in enumerate(self.active) if not running[row]], device=device)
        self._parked.append(([self.active[i] for i in out.tolist()],
                             [(layer.keys.index_select(0, out), layer.values.index_select(0, out))
                              for layer in cache.layers]))
        cache.batch_select_indices(torch.tensor(keep, device=device))
        self.active = [self.active[i] for i in keep]
        self._index = torch.tensor(self.active, device=device)

    def restore(self, cache) -> None:
        """Every row back in the cache, in batch order; a row taken out has zeros after its last column."""
        if not self._parked:
            return
        active = torch.tensor(self.active, device=cache.layers[0].keys.device)
        for n, layer in enumerate(cache.layers):
            keys = layer.keys.new_zeros((self.rows, *layer.keys.shape[1:]))
            values = layer.values.new_zeros((self.rows, *layer.values.shape[1:]))
            keys[active], values[active] = layer.keys, layer.values
            for rows, kv in self._parked:
                k, v = kv[n]
                keys[rows, :, : k.shape[-2]], values[rows, :, : v.shape[-2]] = k, v
            layer.keys, layer.values = keys, values
            if isinstance(layer, SharedPrefixLayer):
                layer.owner = list(self._owner[n])
            if isinstance(layer, GrowingLayer):
                layer._kbuf = layer._vbuf = None  # the next update copies into a fresh buffer
        self._parked, self.active, self._index = [], list(range(self.rows)), None
