"""How each denoising step obtains logits for the block being denoised.

A cache policy owns the model calls of one `generate()` run and is looked up by name in `CACHES`
(generation-config knob `cache`):

* `none` (`NoCache`, exact, LLaDA's computation): a full forward over the whole canvas at every step, projecting
  only the block's positions through the LM head.
* `prefix` (`PrefixCache`, approximate, Fast-dLLM's PrefixCache): one full forward when a block starts keeps every
  layer's keys/values; later steps of the block feed only the block and everything after it, and attend to the
  prefix (prompt and finished blocks) through the kept keys/values.
* `dual` (`DualCache`, approximate, Fast-dLLM's DualCache): the same refresh, but later steps feed only the block;
  the prefix and the masked suffix are both read from the kept keys/values.

Differs from transformers' caches: a diffusion canvas is not append-only. `CanvasKeyValues` holds keys/values for
every position of the canvas; a cached forward feeds a window of columns and writes its new keys/values into that
window in place, so attention always spans the whole canvas (fresh inside the window, as of the refresh outside
it). It honours the `Cache.update(key, value, layer_idx)` contract the attention modules call, and reports the key
length through `get_mask_sizes`, which the model reads. Batches, left padding (the 2-D mask and `position_ids` are
sliced like the input) and CFG's doubled batch need nothing special: every row keeps its own keys/values.

Delayed refresh (generation-config knob `cache_refresh`, `prefix` and `dual`; dKV-Cache's "decode" variant): a full
refresh only every `cache_refresh` blocks. A block that starts without one begins with a cached step whose window
also covers the previous block (from `previous_start`; a shifted model's column predicting the block's first is
that block's last), whose tokens are final by then, so their keys/values are rewritten once from those tokens (a
block's last step wrote them while its last reveal was still a mask); blocks further back keep keys/values computed
while the canvas after them was still masked. At short blocks this replaces a full forward per block by a window of
two blocks: at blocks of 1, a shifted model's `dual` step feeds two columns (the new token, whose output predicts
the block, and the block's mask), which on this package's CPU path costs about what an autoregressive step's one
column does. A canvas of another shape (variable length) always refreshes.

Suffix window (generation-config knob `suffix_window`, DPad / Streaming-dLLM's suffix pruning, for every policy):
the model sees only the first `suffix_window` masked columns after the block; the rest of the canvas is neither fed
nor attended to until a later block reaches it. Approximate (the model sees a shorter canvas); `None` keeps LLaDA's
whole canvas. Under a cache the window moves without a refresh: a refresh also fills the keys/values of every column
the window will reach before the next one (`cache_refresh - 1` blocks further), and the 2-D key mask hides the
stored columns past the window until then.

Exactness: a cached step equals `none` when nothing outside its window changed since the refresh. That holds at
the refresh itself, and at every step of a one-layer model (its keys/values depend only on token and position);
with more layers, stale keys/values of the prefix (and suffix) make later steps of a block approximate.

Shifted logits (`config.shift_logits`, see `diffusion.py`): the block's columns are predicted by the outputs one
column to their left, so a cached step feeds the window from `block_start - 1` (the last prefix column, fresh) and
keeps the outputs of the window's first `block_length` columns; nothing else changes.

Live columns (every policy): a step may name the block columns still masked in some row (`columns`, ascending
block-relative indices); only those go through the LM head (a `(V, d)` projection per column: about a fifth of a
dual-cache step at the demo's size), and the other columns' logits come back as zeros. Exact: the head acts on each
column alone, and the sampler never reveals a column that is not masked.

Every policy counts `forward_passes`, `positions_processed` (query positions fed to the model, summed over the rows,
CFG's unconditional rows included) and `refreshes` (full forwards made to fill a cache).
"""

import torch

from transformers.cache_utils import Cache, CacheLayerMixin

from .diffusion import logit_shift, prediction_rows


class CanvasLayer(CacheLayerMixin):
    """One layer's keys/values over the whole canvas, `(B', H_kv, L, D)`, overwritten in place window by window."""

    is_sliding = False
    is_compileable = False

    def __init__(self, canvas: "CanvasKeyValues"):
        super().__init__()
        self.canvas = canvas

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:  # the refresh: the whole canvas was fed, keep it
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states  # (B', H_kv, L, D)
            return self.keys, self.values
        start = self.canvas.window_start
        end = start + key_states.shape[-2]
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Keys attended to: the whole canvas once filled (not `past + query`, as an appending cache would say)."""
        return (self.keys.shape[-2] if self.is_initialized else query_length), 0

    def get_seq_length(self) -> int:
        """Positions before the fed window: the cached prefix (so default positions start there)."""
        return self.canvas.window_start if self.is_initialized else 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False


class CanvasKeyValues(Cache):
    """Per-layer `CanvasLayer`s sharing one `window_start`: the canvas column of the first fed position."""

    def __init__(self, num_layers: int):
        self.window_start = 0
        super().__init__(layers=[CanvasLayer(self) for _ in range(num_layers)])


class NoCache:
    """Recompute every position at every step; logits only for `[block_start, block_end)`."""

    name = "none"
    exact = True

    def __init__(self, model, config=None, **kwargs):
        self.model = model
        self.shift = logit_shift(model.config)  # 1: column j is predicted by output j - 1
        self.suffix_window = getattr(config, "suffix_window", None)
        self.forward_passes = 0
        self.positions_processed = 0
        self.refreshes = 0

    def visible_end(self, block_end: int, length: int) -> int:
        """Columns `[0, end)` the model sees: the whole canvas, or up to `suffix_window` columns after the block."""
        return length if self.suffix_window is None else min(length, block_end + self.suffix_window)

    def _forward(self, input_ids, attention_mask, position_ids, keep, past_key_values=None, columns=None):
        """`(B', Lb, V)` logits of the outputs `keep` (a slice or index over the fed columns, one per block column);
        with `columns`, only those block columns are projected and the rest are zeros."""
        self.forward_passes += 1
        self.positions_processed += input_ids.numel()
        if columns is not None:
            rows = torch.arange(input_ids.shape[1], device=input_ids.device)[keep]  # (Lb,) fed column of each
            width, keep = rows.numel(), rows[columns.to(rows.device)]
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, logits_to_keep=keep,
        )
        if columns is None:
            return out.logits
        logits = out.logits.new_zeros(out.logits.shape[0], width, out.logits.shape[-1])  # (B', Lb, V)
        logits[:, columns] = out.logits
        return logits

    def logits(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        block_start: int,
        block_end: int,
        step: int,
        columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(B', block_end - block_start, V)` logits for the block, given the whole canvas `x` `(B', L)` (zeros
        outside `columns` when given: see Live columns)."""
        end = self.visible_end(block_end, x.shape[1])
        return self._forward(x[:, :end], _cut(attention_mask, end), position_ids[:, :end],
                             prediction_rows(block_start, block_end, self.shift), columns=columns)


class PrefixCache(NoCache):
    """Fast-dLLM PrefixCache: refresh when a block starts (or every `cache_refresh` blocks: Delayed refresh), then
    feed `[block_start, L)` and reuse the prefix (from `block_start - 1` for a shifted model: that column's output
    predicts the block's first column)."""

    name = "prefix"
    exact = False

    def __init__(self, model, config=None, **kwargs):
        super().__init__(model, config)
        self.store = CanvasKeyValues(model.config.num_hidden_layers)
        self.refresh_every = getattr(config, "cache_refresh", None) or 1  # blocks per full refresh (Delayed refresh)
        self._filled_for = None  # (B', L, columns stored) of the last refresh
        self._block = None  # start of the block the last step denoised
        self._blocks_since_refresh = 0

    def window_end(self, block_end: int, visible: int) -> int:
        """Last fed column (exclusive) of a cached step: the block and the whole visible suffix."""
        return visible

    def logits(self, x, attention_mask, position_ids, block_start, block_end, step, columns=None):
        visible = self.visible_end(block_end, x.shape[1])
        previous, new_block = self._block, block_start != self._block
        self._block = block_start
        self._blocks_since_refresh += new_block
        if (self._filled_for is None or self._filled_for[:2] != tuple(x.shape) or visible > self._filled_for[2]
                or self._blocks_since_refresh >= self.refresh_every
                or (new_block and previous > block_start)):  # due, a grown canvas, or a window past the store
            # keys/values for every column the window reaches before the next refresh (Suffix window)
            filled = min(x.shape[1], visible + (self.refresh_every - 1) * (block_end - block_start))
            self._filled_for, self._blocks_since_refresh = (*x.shape, filled), 0
            self.refreshes += 1
            self.store.reset()
            self.store.window_start = 0
            keys = _hide_after(attention_mask, x, visible, filled)  # (B', filled)
            return self._forward(x[:, :filled], keys, position_ids[:, :filled],
                                 prediction_rows(block_start, block_end, self.shift), self.store, columns)
        filled = self._filled_for[2]
        first = previous if new_block else block_start  # a new block re-feeds the previous one (Delayed refresh)
        end = self.window_end(block_end, visible)
        start = min(first, block_start - self.shift)  # (B', end - start): the re-fed block, or the column predicting
        self.store.window_start = start  # the block's first (a shifted model's previous block holds it already)
        keep = slice(block_start - self.shift - start, block_end - self.shift - start)  # outputs predicting the block
        return self._forward(  # the 2-D mask spans the stored columns: it masks the keys
            x[:, start:end], _hide_after(attention_mask, x, visible, filled), position_ids[:, start:end], keep,
            self.store, columns,
        )


class DualCache(PrefixCache):
    """Fast-dLLM DualCache: refresh as `PrefixCache` does, then feed only the block; prefix and suffix are reused."""

    name = "dual"

    def window_end(self, block_end: int, visible: int) -> int:
        return block_end


def _cut(attention_mask: torch.Tensor | None, end: int) -> torch.Tensor | None:
    return None if attention_mask is None else attention_mask[:, :end]


def _hide_after(attention_mask: torch.Tensor | None, x: torch.Tensor, visible: int, filled: int) -> torch.Tensor | None:
    """The 2-D key mask `(B', filled)` of a cached forward: padding as given, and the stored columns from `visible`
    on (past the suffix window, kept for later blocks) hidden from every query. Bool, so the model does not check
    its values again at every step."""
    if visible >= filled:
        return _cut(attention_mask, filled)
    if attention_mask is None:
        keys = torch.ones_like(x[:, :filled], dtype=torch.bool)
    else:
        keys = attention_mask[:, :filled].to(torch.bool, copy=True)  # never the caller's mask
    keys[:, visible:] = False
    return keys


CACHES = {policy.name: policy for policy in (NoCache, PrefixCache, DualCache)}
