"""Fixed-shape storage (``static=True``): what ``torch.compile`` and CUDA graphs accept.

Every pruned layer holds ``budget + headroom + 1`` slots allocated once; ``update`` writes the new keys at slots
given by a device tensor and returns the whole buffer; attention masks the slots that hold no token. Everything
that changes from step to step on the host (counters, the round trigger, the round itself, which compacts in
place so buffers keep their addresses) runs *before* the forward, from ``get_mask_sizes`` and the mask function,
outside any captured graph (``torch.compiler.disable``: a graph break in an explicitly compiled forward; in
``generate`` they run in the eager input preparation).
"""
from typing import Dict

import torch

from .layer import TriAttentionLayer
from .layout import Layout, SlotTable


def _static(t: torch.Tensor) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(t)
    return t


class StaticSlots(SlotTable):
    """A :class:`SlotTable` that never reallocates, plus the per-step device inputs of a fixed-shape forward:
    ``slot_start`` (first slot this step writes), ``new_valid[n]`` (which of the ``n`` new tokens are real) and
    ``masks[n]`` (``[B, H, n, C]`` what each query may attend)."""

    def __init__(self, batch: int, heads: int, capacity: int, device: torch.device):
        super().__init__(batch, heads, capacity, device)
        for t in (self.valid, self.pos, self.next_pos):
            _static(t)
        self.slot_start = _static(torch.zeros((), dtype=torch.int64, device=device))
        self.new_valid: Dict[int, torch.Tensor] = {}
        self.masks: Dict[int, torch.Tensor] = {}

    def resize(self, capacity: int, keep: int) -> None:
        raise RuntimeError("a static cache never reallocates")

    def select_rows(self, rows: torch.Tensor) -> None:  # in place, so captured graphs stay valid
        for t in (self.valid, self.pos, self.next_pos):
            t.copy_(t.index_select(0, rows.to(t.device)))

    def prepare_step(self, start: int, new_valid: torch.Tensor) -> torch.Tensor:
        """Fill this step's inputs (``new_valid [B, n]``) and return its mask."""
        b, h, capacity = self.valid.shape
        n = new_valid.shape[-1]
        if n not in self.masks:
            self.new_valid[n] = _static(torch.ones(b, n, dtype=torch.bool, device=self.valid.device))
            self.masks[n] = _static(torch.ones(b, h, n, capacity, dtype=torch.bool, device=self.valid.device))
        self.slot_start.fill_(start)
        self.new_valid[n].copy_(new_valid)
        slots = torch.arange(capacity, device=self.valid.device)
        incoming = torch.zeros(b, capacity, dtype=torch.bool, device=self.valid.device)
        incoming[:, start:start + n] = new_valid.to(self.valid.device)
        causal = slots[None, :] <= (start + torch.arange(n, device=slots.device))[:, None]  # [n, C]
        mask = (self.valid | incoming[:, None, :])[:, :, None, :] & causal
        # A query that sees nothing (a padding position) attends everywhere: its output is never used, but a NaN
        # would leak into later layers through masked-but-multiplied values.
        self.masks[n].copy_(mask | ~mask.any(-1, keepdim=True))
        return self.masks[n]


class StaticTriAttentionLayer(TriAttentionLayer):
    """K/V of one layer in ``[B, Hkv, C, D]`` buffers allocated once (``C`` = the layout's capacity)."""

    is_compileable = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes_table = False  # the first member on its device records the slots (set by step_mask)
        self.seq = None  # logical length as a device scalar: read inside a compiled forward without recompiling

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.table = self.layout.tables[key_states.device]  # made by step_mask before the first layer ran
        self.keys = _static(key_states.new_zeros(b, h, self.layout.capacity, d))
        self.values = _static(value_states.new_zeros(b, h, self.layout.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, n = key_states.shape[:3]
        table = self.table
        slots = table.slot_start + torch.arange(n, device=key_states.device)
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        if self.writes_table:
            new_valid = table.new_valid[n]
            pos = table.next_pos[:, None] + new_valid.long().cumsum(-1) - 1
            table.valid.index_copy_(2, slots, new_valid[:, None, :].expand(b, h, n))
            table.pos.index_copy_(2, slots, torch.where(new_valid, pos, -1)[:, None, :].expand(b, h, n))
            table.next_pos.add_(new_valid.sum(-1))
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int):
        before_forward(self.owner, query_length)
        return self.layout.capacity, 0

    def get_seq_length(self):
        return self.seq if self.seq is not None else self.cumulative_length

    def get_max_length(self) -> int:
        return self.layout.capacity

    def shrink(self, capacity: int) -> None:  # the buffers keep their addresses
        pass

    def reset(self) -> None:
        self.cumulative_length = 0
        if self.seq is not None:
            self.seq.zero_()
        if self.index == 0:
            self.owner._reset_shared()

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.keys is not None:
            for t in (self.keys, self.values):
                t.copy_(t.index_select(0, rows.to(t.device)))


@torch.compiler.disable
def before_forward(cache, n: int) -> None:
    """Host side of a static step (once per forward, before any layer): misuse checks, the round, counters."""
    cache.check_static_use()
    cache._maybe_round(n)
    cache._previous_step = n
    for layout in cache.layouts:
        layout.static_advance(n)
    for layer in cache.layers:
        layer.cumulative_length += n
        if layer.seq is None:
            layer.seq = _static(torch.zeros((), dtype=torch.int64, device=cache.layer_device(layer.index)))
        layer.seq.fill_(layer.cumulative_length)


@torch.compiler.disable
def step_mask(cache, batch: int, q_length: int, attention_mask) -> torch.Tensor:
    """The mask function's side of a static step: which new tokens are real (from the 2-D padding mask; one host
    read, only when there is a mask), each table's inputs and mask; returns the first layout's mask (the attention
    function takes each layer's own)."""
    new_valid = torch.ones(batch, q_length, dtype=torch.bool)
    counts = [q_length] * batch
    if attention_mask is not None and attention_mask.dim() == 2:
        new_valid = attention_mask[:, -q_length:].to(torch.bool)
        counts = new_valid.sum(-1).tolist()
    for layout in cache.layouts:
        layout.count_new(counts)
    first = None
    for layout in cache.layouts:
        for i in layout.layer_ids:
            device = cache.layer_device(i)
            layer = cache.layers[i]
            if device not in layout.tables:
                layout.tables[device] = StaticSlots(batch, cache.info.num_kv_heads, layout.capacity, device)
                layer.writes_table = True
        for table in layout.tables.values():
            mask = table.prepare_step(layout.last[0], new_valid.to(table.valid.device))
            first = mask if first is None else first
    return first
