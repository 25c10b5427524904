"""Storage of one decoder layer: its K/V buffers, in the slots its :class:`~.layout.Layout` assigns."""
from typing import Optional

import torch
from transformers.cache_utils import CacheLayerMixin

from ..model_info import LayerPlan
from .layout import Layout, SlotTable


class TriAttentionLayer(CacheLayerMixin):
    """K/V of one layer, ``[B, Hkv, C, D]``; slot ``j`` holds the token the layout's tables describe.

    The logical length (what ``generate``, positions and masks see) is ``cumulative_length``; the physical one
    (slots in use) is the layout's. ``update`` returns the slots in use, oldest first."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, index: int, plan: LayerPlan, layout: Layout, owner):
        super().__init__()
        self.index, self.plan, self.layout = index, plan, layout
        self.owner = owner  # the TriAttentionCache: round trigger, statistics, misuse checks
        self.table: Optional[SlotTable] = None
        self.cumulative_length = 0  # logical tokens seen, padding included

    # -- what attention and rounds read ----------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self.layout.length if self.is_initialized else 0

    @property
    def valid(self) -> torch.Tensor:
        return self.table.valid

    @property
    def pos(self) -> torch.Tensor:
        return self.table.pos

    @property
    def next_pos(self) -> torch.Tensor:
        return self.table.next_pos

    def real_counts(self) -> torch.Tensor:
        """``[B]`` real tokens held per row (read from the device; the layout keeps the same on the host)."""
        return self.valid[:, 0, : self.length].sum(-1)

    # -- transformers hooks ------------------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.keys = self.values = None
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        batch, heads, n = key_states.shape[:3]
        if self.index == 0:
            self.owner._begin_forward(n)
        self.owner._unserved.add(self.index)
        layout = self.layout
        if self.index == layout.leader:
            layout.begin_append(batch, n)
        start, count = layout.last
        if count != n:
            raise RuntimeError(f"layer {self.index} received {n} new tokens, its layout appended {count}")
        self.table = layout.table(batch, heads, key_states.device)
        if self.keys is None:
            if start == 0 and layout.capacity == n:
                self.keys, self.values = key_states, value_states  # the prompt exactly: no copy, no headroom
            else:
                self._allocate(key_states, value_states, layout.capacity, keep=0)
        elif key_states.device != self.keys.device:
            raise ValueError(f"layer {self.index}'s cache lives on {self.keys.device} but new key states arrived on "
                             f"{key_states.device}")
        elif self.keys.shape[2] < layout.capacity:
            self._allocate(self.keys, self.values, layout.capacity, keep=start)
        if not (self.keys is key_states):
            self.keys[:, :, start:start + n] = key_states
            self.values[:, :, start:start + n] = value_states
        self.cumulative_length += n
        end = layout.length
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, keep: int) -> None:
        old_k, old_v = self.keys, self.values
        b, h, _, d = keys.shape
        self.keys = keys.new_empty(b, h, capacity, d)
        self.values = values.new_empty(b, h, capacity, values.shape[-1])
        if keep:
            self.keys[:, :, :keep] = old_k[:, :, :keep]
            self.values[:, :, :keep] = old_v[:, :, :keep]

    def shrink(self, capacity: int) -> None:
        """Reallocate to ``capacity`` slots (after a round), keeping the slots in use."""
        if self.keys is not None and self.keys.shape[2] > capacity:
            self._allocate(self.keys, self.values, capacity, keep=self.layout.length)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int):
        self.owner._maybe_round(query_length)  # masks are built before layer 0 runs: compact first so sizes agree
        return self.length + query_length, self.cumulative_length - self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.table = None
        self.is_initialized = False
        self.cumulative_length = 0
        if self.index == 0:
            self.owner._reset_shared()

    # Row selection moves every layer and the shared layouts at once: transformers calls these per layer.
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.index == 0:
            self.owner._select_rows(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.index == 0:
            rows = len(self.layout.real) or (self.keys.shape[0] if self.keys is not None else 0)
            self.owner._select_rows(torch.arange(rows).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a TriAttention cache cannot be cropped: evicted tokens cannot be restored")

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys = self.keys.index_select(0, rows.to(self.keys.device))
            self.values = self.values.index_select(0, rows.to(self.values.device))

    # -- accounting ------------------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of the K/V buffers allocated."""
        if self.keys is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))

    def used_nbytes(self) -> int:
        """Bytes of the K/V slots in use."""
        if self.keys is None:
            return 0
        per_slot = sum(t.shape[0] * t.shape[1] * t.shape[3] * t.element_size() for t in (self.keys, self.values))
        return per_slot * self.length
