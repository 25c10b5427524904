"""Fixed-shape storage (``static=True``): what ``torch.compile`` and CUDA graphs accept.

The prompt is read eagerly, like the dynamic cache (one forward at SDPA's speed, or chunks with rounds between
them). At the first decode step, after the round that brings the prompt back to the budget, the cache *freezes*:
every layer moves into ``budget + headroom + 1`` slots allocated once (kept across ``reset``, so captured graphs
stay valid), ``update`` writes at slots given by a device tensor and returns the whole buffer, and attention masks
the slots that hold no token. Everything that changes from step to step on the host (counters, the round trigger,
the round itself, which compacts in place) runs before the forward, from ``get_mask_sizes`` and the mask function:
outside any captured graph (``torch.compiler.disable``; in ``generate`` they run in the eager input preparation).
"""
from typing import Dict, Optional

import torch

from .layer import TriAttentionLayer
from .layout import SlotTable


def _static(t: torch.Tensor) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(t)
    return t


class StaticSlots(SlotTable):
    """A :class:`SlotTable` that never reallocates, plus the per-step device inputs of a fixed-shape forward:
    ``slot_start`` (first slot this step writes), ``new_valid[n]`` (which of the ``n`` new tokens are real) and, for
    multi-token steps, ``masks[n]`` (``[B, H, n, C]`` what each query may attend)."""

    def __init__(self, source: SlotTable, capacity: int, length: int):
        b, h = source.valid.shape[:2]
        device = source.valid.device
        super().__init__(b, h, capacity, device)
        self.valid[:, :, :length] = source.valid[:, :, :length]
        self.pos[:, :, :length] = source.pos[:, :, :length]
        self.next_pos.copy_(source.next_pos)
        for t in (self.valid, self.pos, self.next_pos):
            _static(t)
        self.slot_start = _static(torch.zeros((), dtype=torch.int64, device=device))
        self.new_valid: Dict[int, torch.Tensor] = {}
        self.all_real: Dict[int, bool] = {}  # new_valid[n] holds all True (no copy needed)
        self.masks: Dict[int, torch.Tensor] = {}
        self.placeholder = _static(torch.ones(b, 1, 1, 1, dtype=torch.bool, device=device))

    def resize(self, capacity: int, keep: int) -> None:
        raise RuntimeError("a static cache never reallocates")

    def select_rows(self, rows: torch.Tensor) -> None:  # in place, so captured graphs stay valid
        for t in (self.valid, self.pos, self.next_pos):
            t.copy_(t.index_select(0, rows.to(t.device)))

    def prepare_step(self, start: int, new_valid: Optional[torch.Tensor], n: int) -> torch.Tensor:
        """Fill this step's inputs (``new_valid [B, n]``, None = all real) and return a mask for transformers.

        A decode step needs no mask of its own: attention reads ``valid`` after ``update`` marked the new slot."""
        b, h, capacity = self.valid.shape
        device = self.valid.device
        if n not in self.new_valid:
            self.new_valid[n] = _static(torch.ones(b, n, dtype=torch.bool, device=device))
            self.all_real[n] = True
        self.slot_start.fill_(start)
        if new_valid is not None or not self.all_real[n]:
            self.new_valid[n].copy_(new_valid if new_valid is not None else torch.ones(b, n, dtype=torch.bool,
                                                                                       device=device))
            self.all_real[n] = new_valid is None
        if n == 1:
            return self.placeholder
        if n not in self.masks:
            self.masks[n] = _static(torch.ones(b, h, n, capacity, dtype=torch.bool, device=device))
        slots = torch.arange(capacity, device=device)
        incoming = torch.zeros(b, capacity, dtype=torch.bool, device=device)
        incoming[:, start:start + n] = self.new_valid[n]
        causal = slots[None, :] <= (start + torch.arange(n, device=device))[:, None]  # [n, C]
        mask = (self.valid | incoming[:, None, :])[:, :, None, :] & causal
        # A query that sees nothing (a padding position) attends everywhere: its output is never used, but a NaN
        # would leak into later layers through masked-but-multiplied values.
        self.masks[n].copy_(mask | ~mask.any(-1, keepdim=True))
        return self.masks[n]


class StaticTriAttentionLayer(TriAttentionLayer):
    """A layer that stores like :class:`TriAttentionLayer` until the cache freezes, then in ``[B, Hkv, C, D]``
    buffers allocated once (``C`` = the layout's capacity target)."""

    is_compileable = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes_table = False  # the first member on its device records the slots
        self.frozen_keys = self.frozen_values = None  # kept across reset (their addresses are in captured graphs)

    def freeze(self, capacity: int, tables: Dict[torch.device, StaticSlots], seen: set) -> None:
        device = self.keys.device
        b, h, _, d = self.keys.shape
        if self.frozen_keys is None or self.frozen_keys.shape[:2] != (b, h):
            self.frozen_keys = _static(self.keys.new_zeros(b, h, capacity, d))
            self.frozen_values = _static(self.values.new_zeros(b, h, capacity, self.values.shape[-1]))
        n = self.layout.length
        self.frozen_keys[:, :, :n] = self.keys[:, :, :n]
        self.frozen_values[:, :, :n] = self.values[:, :, :n]
        self.keys, self.values = self.frozen_keys, self.frozen_values
        self.table = tables[device]
        self.writes_table = device not in seen
        seen.add(device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.owner.frozen:
            return super().update(key_states, value_states)
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
        if not self.owner.frozen:
            return super().get_mask_sizes(query_length)
        return self.layout.capacity, 0

    def get_seq_length(self):
        return self.owner.seq if self.owner.frozen else self.cumulative_length

    def get_max_length(self) -> int:
        return self.layout.capacity_target

    def shrink(self, capacity: int) -> None:
        if not self.owner.frozen:
            super().shrink(capacity)

    def select_rows(self, rows: torch.Tensor) -> None:
        if not self.owner.frozen:
            return super().select_rows(rows)
        for t in (self.keys, self.values):
            t.copy_(t.index_select(0, rows.to(t.device)))


def freeze(cache) -> None:
    """Move every layer into its fixed buffers (at the first decode step, after its round)."""
    seen: set = set()
    for layout in cache.layouts:
        target = layout.capacity_target
        old = layout.static_tables or {}
        layout.tables = {dev: StaticSlots(t, target, layout.length) for dev, t in layout.tables.items()}
        for dev, table in layout.tables.items():  # reuse the previous sequence's buffers: same addresses
            if dev in old and old[dev].valid.shape == table.valid.shape:
                for name in ("valid", "pos", "next_pos"):
                    getattr(old[dev], name).copy_(getattr(table, name))
                layout.tables[dev] = old[dev]
                old[dev].all_real, old[dev].masks = {}, {}
        layout.static_tables = layout.tables
        layout.capacity = target
        for i in layout.layer_ids:
            cache.layers[i].freeze(target, layout.tables, seen)
    if cache.seq is None:
        cache.seq = _static(torch.zeros((), dtype=torch.int64, device=cache.layers[0].keys.device))
    cache.frozen = True


@torch.compiler.disable
def before_forward(cache, n: int) -> None:
    """Host side of a static cache's forward (once, before any layer): the round; at the first decode step the
    freeze; once frozen, the misuse check and the counters of a fixed-shape step."""
    cache._maybe_round(n)
    if not cache.frozen:
        fits = all(l.length + n <= l.capacity_target for l in cache.layouts)
        if n == 1 and cache.prompt_lengths is not None and fits and cache.layers[0].is_initialized:
            freeze(cache)
        else:
            return  # still reading the prompt: the dynamic path (its own checks and counters)
    elif cache.mask_pending:
        return  # get_mask_sizes again within one forward (a second mask type)
    cache.check_static_use()
    cache._previous_step = n
    for layout in cache.layouts:
        layout.static_advance(n)
    for layer in cache.layers:
        layer.cumulative_length += n
    cache.seq.fill_(cache.layers[0].cumulative_length)


@torch.compiler.disable
def step_mask(cache, q_length: int, attention_mask) -> torch.Tensor:
    """The mask function's side of a frozen step: which new tokens are real (from the 2-D padding mask; one host
    read, only when there is one), each table's inputs; returns a 4-D mask so transformers builds no other."""
    new_valid = None
    counts = None
    if attention_mask is not None and attention_mask.dim() == 2:
        new_valid = attention_mask[:, -q_length:].to(torch.bool)
        counts = new_valid.sum(-1).tolist()
        if all(c == q_length for c in counts):
            new_valid = None
    first = None
    for layout in cache.layouts:
        if counts is not None:
            layout.count_new(counts)
        for table in layout.tables.values():
            mask = table.prepare_step(layout.last[0], None if new_valid is None else new_valid.to(table.valid.device),
                                      q_length)
            first = mask if first is None else first
    return first
