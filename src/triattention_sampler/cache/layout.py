"""Which slot of a layer holds which token: shared by every layer that keeps the same key sets.

With the paper's ``per_head`` granularity and one budget, all pruned layers keep identical key sets, so their
per-slot bookkeeping is one :class:`Layout` (host counters) with one :class:`SlotTable` per device (validity and
RoPE position of each slot) instead of one copy per layer: a decode step updates it once, not once per layer.
Host counters (slots in use, real tokens per row) let rounds be triggered without reading the GPU.
"""
from typing import Dict, List, Optional

import torch


class SlotTable:
    """Per-slot metadata on one device: ``valid [B, H, C]`` (slot holds a real token), ``pos [B, H, C]``
    (its RoPE position, -1 if none) and ``next_pos [B]`` (the position the next token of each row gets)."""

    def __init__(self, batch: int, heads: int, capacity: int, device: torch.device):
        self.valid = torch.zeros(batch, heads, capacity, dtype=torch.bool, device=device)
        self.pos = torch.full((batch, heads, capacity), -1, dtype=torch.int64, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.int64, device=device)
        self.step = -1  # the layout step this table last appended

    @property
    def capacity(self) -> int:
        return self.valid.shape[-1]

    def resize(self, capacity: int, keep: int) -> None:
        """Reallocate to ``capacity`` slots, keeping the first ``keep``."""
        valid, pos = self.valid, self.pos
        self.valid = valid.new_zeros(*valid.shape[:2], capacity)
        self.pos = pos.new_full((*pos.shape[:2], capacity), -1)
        self.valid[:, :, :keep] = valid[:, :, :keep]
        self.pos[:, :, :keep] = pos[:, :, :keep]

    def append(self, start: int, n: int) -> None:
        """Slots ``[start, start + n)`` receive the next ``n`` tokens of every row (all real; padding is fixed by
        :meth:`mark_padding`)."""
        self.valid[:, :, start:start + n] = True
        if n == 1:  # a decode step: no arange
            self.pos[:, :, start] = self.next_pos[:, None]
        else:
            steps = torch.arange(n, device=self.pos.device)
            self.pos[:, :, start:start + n] = (self.next_pos[:, None] + steps)[:, None, :]
        self.next_pos += n

    def mark_padding(self, start: int, new_valid: torch.Tensor) -> None:
        """The latest ``n`` slots from ``start``: ``new_valid [B, n]`` True for real tokens (positions count only
        real tokens, as transformers' position ids do for left-padded rows)."""
        n = new_valid.shape[-1]
        new_valid = new_valid.to(self.valid.device, torch.bool)
        before = self.next_pos - n
        pos = before[:, None] + new_valid.long().cumsum(-1) - 1
        self.valid[:, :, start:start + n] = new_valid[:, None, :]
        self.pos[:, :, start:start + n] = torch.where(new_valid, pos, -1)[:, None, :]
        self.next_pos = before + new_valid.sum(-1)

    def gather(self, indices: torch.Tensor, keep_valid: torch.Tensor, length: int) -> None:
        """After compaction: slot ``j`` now holds what slot ``indices[..., j]`` held."""
        out_len = indices.shape[-1]
        new_pos = torch.gather(self.pos[:, :, :length], 2, indices)
        self.pos[:, :, :out_len] = torch.where(keep_valid, new_pos, -1)
        self.valid[:, :, :out_len] = keep_valid
        self.valid[:, :, out_len:] = False
        self.pos[:, :, out_len:] = -1

    def select_rows(self, rows: torch.Tensor) -> None:
        for name in ("valid", "pos", "next_pos"):
            t = getattr(self, name)
            setattr(self, name, t.index_select(0, rows.to(t.device)))


class Layout:
    """Host side of a group of layers with identical key sets.

    Args:
        layer_ids: member layers, ascending (the first one appends for all).
        budget: tokens kept per row after a round (``None``: never compacted).
        capacity_target: slots a member needs at most (``budget + headroom + 1``; ``None``: unbounded).
    """

    def __init__(self, layer_ids: List[int], budget: Optional[int], capacity_target: Optional[int]):
        self.layer_ids = list(layer_ids)
        self.budget = budget
        self.capacity_target = capacity_target
        self.static_tables = None  # static=True: the fixed tables, kept across reset (captured graphs use them)
        self.reset()

    def reset(self) -> None:
        self.tables: Dict[torch.device, SlotTable] = {}
        self.capacity = 0
        self.length = 0  # slots in use
        self.real: List[int] = []  # real tokens held per row
        self.seen: List[int] = []  # real tokens seen per row (= the next RoPE position)
        self.all_valid = True  # no padding or filler slot held (attention may skip the mask)
        self.uniform_heads = True  # every KV head holds the same slots (padding only, no per-head filler yet)
        self.last = (0, 0)  # (first slot, count) of the latest append
        self.step = 0  # appends so far
        self.padding_step = -1  # the step whose padding the host counters reflect
        self.padding_checked = -1  # the step whose new tokens were checked for padding
        self._new_valid: Optional[torch.Tensor] = None

    @property
    def leader(self) -> int:
        return self.layer_ids[0]

    def begin_append(self, batch: int, n: int) -> None:
        """Host side of appending ``n`` tokens per row (called by the leader layer once per forward)."""
        if not self.real:
            self.real, self.seen = [0] * batch, [0] * batch
        start = self.length
        self.length += n
        self.real = [r + n for r in self.real]
        self.seen = [r + n for r in self.seen]
        self.last, self.step = (start, n), self.step + 1
        if self.length > self.capacity:
            self.capacity = self._grown(self.length)

    def _grown(self, needed: int) -> int:
        if self.capacity == 0 and (self.capacity_target is None or needed + 1 >= self.capacity_target):
            return needed  # a prompt at least as long as the target: exactly it (a round shrinks it next)
        grown = self.capacity + max(self.capacity // 4, 64)
        if self.capacity_target is not None:
            grown = min(grown, self.capacity_target)
        return max(needed, grown)

    def table(self, batch: int, heads: int, device: torch.device) -> SlotTable:
        """This device's table, grown to the layout's capacity and holding the latest append."""
        table = self.tables.get(device)
        if table is not None and table.step == self.step and table.capacity >= self.capacity:
            return table  # this step's append is recorded already (every member but the first per device)
        if table is None:
            table = self.tables[device] = SlotTable(batch, heads, self.capacity, device)
            if self.length > self.last[1]:  # a device joining late (never in practice): copy what others hold
                other = next(t for d, t in self.tables.items() if d != device)
                table.valid[:, :, :self.length - self.last[1]] = other.valid[:, :, :self.length - self.last[1]]
                table.pos[:, :, :self.length - self.last[1]] = other.pos[:, :, :self.length - self.last[1]]
                table.next_pos.copy_(other.next_pos - self.last[1])
        elif table.capacity < self.capacity:
            table.resize(self.capacity, self.last[0])
        if table.step != self.step:
            table.append(*self.last)
            table.step = self.step
            if self.padding_step == self.step:  # padding was marked on another device first
                table.mark_padding(self.last[0], self._new_valid)
        return table

    def static_advance(self, n: int) -> None:
        """Host side of a fixed-capacity step (the layers write on the device, at the table's ``slot_start``);
        :meth:`count_new` then says how many of the ``n`` tokens are real."""
        if self.length + n > self.capacity:
            raise ValueError(
                f"a static TriAttention cache holds {self.capacity} slots per layer and this forward brings {n} "
                f"tokens on top of {self.length}: read long prompts in chunks (prefill_chunk, or generate's "
                f"prefill_chunk_size) of at most {self.capacity - (self.budget or 0) - 1} tokens")
        self.last, self.step = (self.length, n), self.step + 1
        self.length += n
        self.real = [r + n for r in self.real]
        self.seen = [r + n for r in self.seen]

    def count_new(self, counts: List[int]) -> None:
        """The latest ``n`` tokens held ``counts`` real ones per row (fewer with left padding)."""
        n = self.last[1]
        if not self.real:
            self.real, self.seen = list(counts), list(counts)
        elif any(c != n for c in counts):
            self.real = [r - n + c for r, c in zip(self.real, counts)]
            self.seen = [r - n + c for r, c in zip(self.seen, counts)]
        self.all_valid = self.all_valid and all(c == n for c in counts)

    def mark_padding(self, new_valid: torch.Tensor, counts: List[int]) -> None:
        """Host side of :meth:`SlotTable.mark_padding`: ``counts`` real tokens per row among the latest append."""
        if self.padding_step == self.step:
            return
        self.count_new(counts)
        self.padding_step, self._new_valid = self.step, new_valid
        for table in self.tables.values():
            if table.step == self.step:  # tables on devices whose layers have not run yet mark it on append
                table.mark_padding(self.last[0], new_valid)

    def reorder(self, rows: torch.Tensor, host_rows: List[int]) -> None:
        """Keep rows ``rows`` (beam search / batch selection)."""
        self.real = [self.real[i] for i in host_rows] if self.real else []
        self.seen = [self.seen[i] for i in host_rows] if self.seen else []
        for table in self.tables.values():
            table.select_rows(rows)
