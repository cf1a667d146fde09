"""Fast sampling: cache policies (`caching.py`), parallel decoding, and the exact savings of `generate()`.

Oracles: `NoCache` (a full forward) where a cache is exact; for the approximate steps, one forward of the model over
[canvas as of the refresh ; the fed window] with a 4-D mask, which spells out what a cached step must see (fresh
keys inside its window, the refresh's keys outside it); and a plain step-by-step sampler written out here.
"""

import pytest
import torch

from helpers import CACHED, MASK, FakeDenoiser, tiny_model
from modeling_illada import IlladaGenerationConfig
from modeling_illada.caching import CACHES, DualCache, NoCache, PrefixCache
from modeling_illada.schedules import SCHEDULES


def padded_canvas(prompt_lengths=(6, 3), new=12, seed=0):
    """A left-padded batch of prompts followed by `new` masks: `(x, 2-D mask, position_ids)`."""
    generator = torch.Generator().manual_seed(seed)
    width = max(prompt_lengths)
    rows, masks = [], []
    for n in prompt_lengths:
        prompt = torch.randint(4, 64, (n,), generator=generator)
        rows.append(torch.cat([torch.full((width - n,), 1), prompt, torch.full((new,), MASK)]))
        masks.append(torch.cat([torch.zeros(width - n, dtype=torch.long), torch.ones(n + new, dtype=torch.long)]))
    x, mask = torch.stack(rows), torch.stack(masks)  # (B, L)
    return x, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def stale_reference(model, refreshed, x, mask, positions, start, end):
    """Logits of `x[:, start:end]` when every column outside `[start, end)` is seen as it was in `refreshed`.

    One forward over `[refreshed ; x[:, start:end]]`: the first copy attends bidirectionally to itself (the refresh);
    the window copy attends to the refresh's columns outside the window and to itself, at the window's positions.
    """
    length, window = x.shape[1], end - start
    keys_real = torch.cat([mask, torch.ones(x.shape[0], window, dtype=torch.long)], 1).bool()  # (B, L + W)
    allowed = torch.zeros(length + window, length + window, dtype=torch.bool)
    allowed[:length, :length] = True
    allowed[length:, :start] = True
    allowed[length:, end:length] = True
    allowed[length:, length:] = True
    four_d = allowed[None, None] & keys_real[:, None, None, :]  # (B, 1, L + W, L + W)
    ids = torch.cat([refreshed, x[:, start:end]], 1)
    pos = torch.cat([positions, positions[:, start:end]], 1)
    return model(input_ids=ids, attention_mask=four_d, position_ids=pos).logits[:, length:]


def reveal_some(x, start, end, generator_seed=1):
    """A later canvas of the same block: half of its masks revealed with random tokens."""
    generator = torch.Generator().manual_seed(generator_seed)
    x = x.clone()
    columns = torch.arange(start, end)[::2]
    x[:, columns] = torch.randint(4, 64, (x.shape[0], len(columns)), generator=generator)
    return x


# ----------------------------------------------------------------------------------------------- logits


@pytest.mark.parametrize("name", CACHED)
def test_refresh_step_logits_equal_uncached(name):
    model = tiny_model(tie_word_embeddings=False)
    x, mask, positions = padded_canvas()
    for start in (6, 10):  # two blocks: each starts with a refresh
        cached = CACHES[name](model).logits(x, mask, positions, start, start + 4, 0)
        plain = NoCache(model).logits(x, mask, positions, start, start + 4, 0)
        assert cached.shape == (2, 4, 64)
        torch.testing.assert_close(cached, plain, rtol=0, atol=0)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("name", sorted(CACHES))
def test_live_columns_are_the_only_ones_projected(name, shift):
    # `columns`: the LM head projects those block columns only (zeros elsewhere), at a refresh and a cached step,
    # for both layouts (a shifted model's block at column 0 reads column 0's own output)
    model = tiny_model(tie_word_embeddings=False, shift_logits=shift)
    x, mask, positions = padded_canvas()
    columns = torch.tensor([1, 3])

    def logits(start, step, live):  # a refresh (step 0), or a refresh and then a cached step on a later canvas
        cache = CACHES[name](model)
        out = cache.logits(x, mask, positions, start, start + 4, 0, None if step else live)
        if step:
            out = cache.logits(reveal_some(x, start, start + 4), mask, positions, start, start + 4, 1, live)
        return out

    for start, step in ((0, 0), (6, 0), (6, 1)):
        full, got = logits(start, step, None), logits(start, step, columns)
        assert got.shape == full.shape == (2, 4, 64)
        torch.testing.assert_close(got[:, columns], full[:, columns], rtol=1e-5, atol=1e-5)
        assert not got[:, [0, 2]].any()


@pytest.mark.parametrize("policy", [CACHES[name] for name in CACHED])
def test_cached_steps_see_fresh_window_and_refreshed_rest(policy):
    model = tiny_model(tie_word_embeddings=False)
    x, mask, positions = padded_canvas()
    start, end = 10, 14
    cache = policy(model)
    cache.logits(x, mask, positions, start, end, 0)  # refresh
    later = reveal_some(x, start, end)
    cached = cache.logits(later, mask, positions, start, end, 1)
    w_end = x.shape[1] if policy is PrefixCache else end  # prefix feeds block + suffix, dual the block
    reference = stale_reference(model, x, later, mask, positions, start, w_end)[:, : end - start]
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
    # ... and it is an approximation: with two layers, a full forward of the new canvas differs
    plain = NoCache(model).logits(later, mask, positions, start, end, 1)
    assert not torch.allclose(cached, plain, atol=1e-4)
    # counters: one refresh over the canvas, then only the window, per row
    assert (cache.forward_passes, cache.refreshes) == (2, 1)
    assert cache.positions_processed == x.numel() + x.shape[0] * (w_end - start)


@pytest.mark.parametrize("name", CACHED)
def test_cached_steps_are_exact_for_a_one_layer_model(name):
    # one layer: keys/values depend only on token and position, so nothing outside the window goes stale
    model = tiny_model(num_hidden_layers=1, tie_word_embeddings=False)
    x, mask, positions = padded_canvas()
    cache = CACHES[name](model)
    cache.logits(x, mask, positions, 10, 14, 0)
    later = reveal_some(x, 10, 14)
    torch.testing.assert_close(
        cache.logits(later, mask, positions, 10, 14, 1), NoCache(model).logits(later, mask, positions, 10, 14, 1),
        rtol=1e-5, atol=1e-5,
    )


@pytest.mark.parametrize("policy", [PrefixCache, DualCache])
def test_a_block_without_refresh_refeeds_the_previous_block(policy):
    # cache_refresh=2: block [10, 12) refreshes, block [12, 14) starts with a window from 10 (the previous block's
    # final tokens) and sees everything else as the refresh saw it
    model = tiny_model(tie_word_embeddings=False)
    x, mask, positions = padded_canvas()
    cache = policy(model, IlladaGenerationConfig(cache="dual", cache_refresh=2))
    cache.logits(x, mask, positions, 10, 12, 0)  # refresh
    later = reveal_some(x, 10, 14)
    cached = cache.logits(later, mask, positions, 12, 14, 0)
    w_end = x.shape[1] if policy is PrefixCache else 14
    reference = stale_reference(model, x, later, mask, positions, 10, w_end)[:, 2:4]
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
    assert (cache.forward_passes, cache.refreshes) == (2, 1)
    assert cache.positions_processed == x.numel() + x.shape[0] * (w_end - 10)
    cache.logits(later, mask, positions, 14, 16, 0)  # the second block since the refresh: a full forward again
    assert cache.refreshes == 2 and cache.positions_processed == 2 * x.numel() + x.shape[0] * (w_end - 10)


# ----------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_one_layer_cached_generation_is_token_identical(name, cfg_scale):
    model = tiny_model(num_hidden_layers=1, tie_word_embeddings=False)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(attention_mask=mask, max_new_tokens=12, steps=12, block_length=4, cfg_scale=cfg_scale,
                 eos_early_stop=False, return_dict_in_generate=True)
    plain = model.generate(x, **knobs)
    cached = model.generate(x, cache=name, **knobs)
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.num_forward_passes == plain.num_forward_passes == 12
    assert cached.num_positions_processed < plain.num_positions_processed


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize(
    "knobs", [dict(variable_length=True, max_new_tokens=12, block_length=4), dict(max_new_tokens=0, block_length=3)]
)
def test_one_layer_cached_variable_length_and_infilling_are_token_identical(name, knobs):
    # variable length grows the canvas block by block; infilling puts the block inside the prompt
    model = tiny_model(num_hidden_layers=1, tie_word_embeddings=False)
    prompt = torch.randint(4, 64, (1, 8), generator=torch.Generator().manual_seed(2))
    if not knobs.get("variable_length"):
        prompt[0, [2, 3, 5, 6]] = MASK
    knobs = dict(eos_token_id=int(prompt[0, 1]), return_dict_in_generate=True, **knobs)
    plain = model.generate(prompt, **knobs)
    cached = model.generate(prompt, cache=name, **knobs)
    assert torch.equal(cached.sequences, plain.sequences) and not bool((cached.sequences == MASK).any())
    assert cached.num_positions_processed < plain.num_positions_processed


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("shift", [False, True])
def test_one_layer_delayed_refresh_is_token_identical_and_refreshes_every_n_blocks(name, shift):
    # one layer: the previous block's re-fed keys/values are exact, so a run that refreshes every 4th block writes
    # plain's tokens; 6 blocks -> refreshes at blocks 0 and 4
    model = tiny_model(num_hidden_layers=1, tie_word_embeddings=False, shift_logits=shift)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(attention_mask=mask, max_new_tokens=12, steps=12, block_length=2, eos_early_stop=False,
                 return_dict_in_generate=True)
    plain = model.generate(x, **knobs)
    every_block = model.generate(x, cache=name, **knobs)
    delayed = model.generate(x, cache=name, cache_refresh=4, **knobs)
    assert torch.equal(delayed.sequences, plain.sequences)
    width = x.shape[1] + 12
    if name == "dual":  # refreshes over the canvas, then per row: 4-column windows opening blocks (the previous block
        # holds a shifted model's predicting column), else the block and, when shifted, its left neighbour
        fed = (2 * width + 4 * 4 + 6 * (2 + shift)) * x.shape[0]
        assert delayed.num_positions_processed == fed
    assert delayed.num_positions_processed < every_block.num_positions_processed


def test_shifted_dual_cache_at_blocks_of_one_feeds_two_columns_per_step():
    # the saved sampler of a shifted model: one refresh, then each step feeds the token revealed last (whose output
    # predicts the block) and the block's mask; one layer, so the tokens are plain's
    model = tiny_model(num_hidden_layers=1, tie_word_embeddings=False, shift_logits=True)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(attention_mask=mask, max_new_tokens=12, steps=12, block_length=1, eos_early_stop=False,
                 return_dict_in_generate=True)
    plain = model.generate(x, **knobs)
    cached = model.generate(x, cache="dual", cache_refresh=64, **knobs)
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.num_positions_processed == (x.shape[1] + 12 + 11 * 2) * x.shape[0]


@pytest.mark.parametrize("name", CACHED)
def test_cached_left_padded_cfg_batch_matches_each_prompt_alone(name):
    model = tiny_model(tie_word_embeddings=False)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(max_new_tokens=12, steps=12, block_length=4, cfg_scale=1.0, cache=name)
    together = model.generate(x, attention_mask=mask, **knobs)
    for row, n in enumerate((6, 3)):
        alone = model.generate(x[row : row + 1, -n:], **knobs)
        assert torch.equal(together[row, -(n + 12) :], alone[0])
    assert torch.equal(together[1, :3], torch.full((3,), 1))  # padding untouched


@pytest.mark.parametrize("cache", sorted(CACHES))
def test_threshold_one_reduces_to_plain_one_token_per_step(cache):
    model = tiny_model(tie_word_embeddings=False)
    prompt = torch.randint(4, 64, (2, 4), generator=torch.Generator().manual_seed(3))
    knobs = dict(max_new_tokens=8, block_length=4, cache=cache, eos_early_stop=False, return_dict_in_generate=True)
    plain = model.generate(prompt, steps=8, **knobs)
    parallel = model.generate(prompt, threshold=1.0, **knobs)
    assert torch.equal(parallel.sequences, plain.sequences)
    assert parallel.num_forward_passes == 8 and parallel.tokens_per_forward == 1.0


def test_parallel_decoding_uses_a_0_9_threshold():
    # p(target) = e^s / (e^s + 63): s=8 -> 0.98 (above 0.9), s=5 -> 0.70 (below)
    strengths = [8.0 if i % 2 else 5.0 for i in range(64)]
    model = FakeDenoiser([10 + i for i in range(64)], strengths)
    seen = []
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=8, parallel_decoding=True, on_step=seen.append,
                         return_dict_in_generate=True)
    first = seen[0].revealed[0].nonzero().flatten().tolist()
    assert first == [3, 5, 7, 9]  # every confident (odd) position at once
    assert out.num_forward_passes == 1 + 4  # then the unconfident ones, one per step
    assert out.sequences[0, 2:].tolist() == [12 + i for i in range(8)]
    explicit = FakeDenoiser([10 + i for i in range(64)], strengths)
    stricter = explicit.generate(torch.tensor([[20, 21]]), max_new_tokens=8, parallel_decoding=True, threshold=0.99,
                                 return_dict_in_generate=True)
    assert stricter.num_forward_passes == 8  # an explicit threshold wins


def plain_sampler(model, prompt, new, block, steps, schedule, eos=None):
    """LLaDA's loop written out: every scheduled step runs a full forward, even one that reveals nothing."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], new), MASK)], 1)
    forwards = 0
    for start in range(prompt.shape[1], x.shape[1], block):
        counts = SCHEDULES[schedule]((x[:, start : start + block] == MASK).sum(-1), steps)  # (B, steps)
        for step in range(steps):
            logits = model(x).logits[:, start : start + block]
            forwards += 1
            x0 = logits.argmax(-1)
            confidence = logits.softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
            confidence = confidence.masked_fill(x[:, start : start + block] != MASK, -torch.inf)
            for row in range(x.shape[0]):
                top = confidence[row].topk(int(counts[row, step])).indices
                x[row, start + top] = x0[row, top]
    return x, forwards


def test_steps_that_reveal_nothing_run_no_forward():
    model = tiny_model(tie_word_embeddings=False)
    prompt = torch.randint(4, 64, (2, 4), generator=torch.Generator().manual_seed(5))
    reference, reference_forwards = plain_sampler(model, prompt, new=16, block=8, steps=8, schedule="cosine")
    out = model.generate(prompt, max_new_tokens=16, steps=16, block_length=8, schedule="cosine",
                         eos_early_stop=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, reference)
    zero_steps = int((SCHEDULES["cosine"](torch.tensor([8]), 8) == 0).sum()) * 2  # per block, two blocks
    assert zero_steps > 0 and out.num_forward_passes == reference_forwards - zero_steps


def test_early_stop_is_exact_up_to_the_first_end_token_on_a_real_model():
    model = tiny_model(tie_word_embeddings=False)
    prompt = torch.randint(4, 64, (1, 4), generator=torch.Generator().manual_seed(7))
    knobs = dict(max_new_tokens=24, steps=24, block_length=8, return_dict_in_generate=True)
    plain = model.generate(prompt, eos_early_stop=False, **knobs)
    end_token = int(plain.sequences[0, 4 + 9])  # call a token of the second block "EOS"
    first = int((plain.sequences[0, 4:] == end_token).nonzero()[0])
    plain = model.generate(prompt, eos_early_stop=False, eos_token_id=end_token, **knobs)
    early = model.generate(prompt, eos_token_id=end_token, **knobs)
    assert first < 16 and torch.equal(early.sequences[0, : 4 + first + 1], plain.sequences[0, : 4 + first + 1])
    assert early.num_forward_passes == (first // 8 + 1) * 8 < plain.num_forward_passes == 24


# ----------------------------------------------------------------------------------------------- knobs


@pytest.mark.parametrize(
    "knobs,message",
    [
        (dict(cache="kv"), "'dual', 'none', 'prefix'"),
        (dict(parallel_decoding="yes"), "parallel_decoding"),
        (dict(parallel_decoding=True, threshold=0.0), "threshold"),
        (dict(cache="dual", cache_refresh=0), "cache_refresh"),
        (dict(cache="dual", cache_refresh=2.5), "cache_refresh"),
    ],
)
def test_bad_cache_knobs_name_the_parameter(knobs, message):
    with pytest.raises(ValueError, match=message):
        IlladaGenerationConfig(**knobs)
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(torch.randint(4, 64, (1, 3)), max_new_tokens=4, **knobs)


def test_parallel_decoding_needs_no_steps_divisibility():
    config = IlladaGenerationConfig(max_new_tokens=8, block_length=4, steps=3, parallel_decoding=True, cache="dual")
    assert config.parallel_decoding and config.cache == "dual"


# ----------------------------------------------------------------------------------------------- suffix window


def test_suffix_window_logits_are_a_forward_over_the_cut_canvas():
    model = tiny_model(tie_word_embeddings=False)
    x, mask, positions = padded_canvas(new=16)  # (2, 22)
    config = IlladaGenerationConfig(suffix_window=3)
    cache = NoCache(model, config=config)
    got = cache.logits(x, mask, positions, 6, 10, 0)
    expected = model(input_ids=x[:, :13], attention_mask=mask[:, :13], position_ids=positions[:, :13]).logits[:, 6:10]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert cache.positions_processed == 2 * 13
    # ... and it is an approximation: the whole canvas gives other logits
    assert not torch.allclose(got, NoCache(model).logits(x, mask, positions, 6, 10, 0), atol=1e-4)


@pytest.mark.parametrize("name", sorted(CACHES))
def test_suffix_window_covering_the_canvas_changes_nothing(name):
    model = tiny_model(tie_word_embeddings=False)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(attention_mask=mask, max_new_tokens=12, steps=12, block_length=4, cache=name, eos_early_stop=False,
                 return_dict_in_generate=True)
    whole = model.generate(x, **knobs)
    wide = model.generate(x, suffix_window=8, **knobs)  # after the first block 8 columns remain: all visible
    narrow = model.generate(x, suffix_window=0, **knobs)
    assert torch.equal(wide.sequences, whole.sequences)
    assert wide.num_positions_processed == whole.num_positions_processed
    assert narrow.num_positions_processed < whole.num_positions_processed
    assert not bool((narrow.sequences == MASK).any())


@pytest.mark.parametrize("name", CACHED)
def test_refresh_under_a_suffix_window_stores_columns_ahead_and_hides_them(name):
    # cache_refresh=4, blocks of 4, window 3: the refresh fills the window and the 3 blocks after it (12 more columns)
    # but its logits are those of the cut canvas; a later block's step reads them without a refresh
    model = tiny_model(tie_word_embeddings=False)
    x, mask, positions = padded_canvas(new=24)  # (2, 30)
    config = IlladaGenerationConfig(cache=name, suffix_window=3, cache_refresh=4)
    cache = CACHES[name](model, config=config)
    got = cache.logits(x, mask, positions, 6, 10, 0)
    torch.testing.assert_close(got, NoCache(model, config=config).logits(x, mask, positions, 6, 10, 0),
                               rtol=1e-5, atol=1e-5)
    assert cache.positions_processed == 2 * 25 and cache.store.layers[0].keys.shape[-2] == 25
    given = mask.bool()
    cache.logits(reveal_some(x, 6, 14), given, positions, 10, 14, 0)
    assert cache.refreshes == 1 and torch.equal(given, mask.bool())  # the caller's mask is not written to


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("shift", [False, True])
def test_one_layer_suffix_window_moves_without_a_refresh_and_is_token_identical(name, shift):
    # one layer: stored keys/values depend only on token and position, so a window moving over stored, hidden
    # columns writes the uncached window's tokens; 6 blocks of 2, refreshed at blocks 0 and 4 (they fill 17 and 18
    # columns), else windows opening a block (from the previous block) and later steps (from the block)
    model = tiny_model(num_hidden_layers=1, tie_word_embeddings=False, shift_logits=shift)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(attention_mask=mask, max_new_tokens=12, steps=12, block_length=2, suffix_window=3,
                 eos_early_stop=False, return_dict_in_generate=True)
    plain = model.generate(x, **knobs)
    delayed = model.generate(x, cache=name, cache_refresh=4, **knobs)
    every_block = model.generate(x, cache=name, **knobs)
    assert torch.equal(delayed.sequences, plain.sequences)
    if name == "dual":  # blocks 1, 2, 3 and 5 open with 4 columns; every block has one later step
        fed = 17 + 18 + 4 * 4 + 6 * (2 + shift)
    else:  # prefix: the visible suffix too, which stops growing at the canvas's end
        fed = 17 + 18 + 3 * 7 + 4 + 4 * (5 + shift) + (4 + shift) + (2 + shift)
    assert delayed.num_positions_processed == fed * x.shape[0] < every_block.num_positions_processed


def test_a_window_as_long_as_the_answer_changes_nothing_under_a_delayed_dual_cache():
    # the demo's saved sampler (shifted, blocks of 1, dual cache filled once) with a window covering its length:
    # the same tokens from the same work (the demo saves a window of 256 for answers of up to 256 tokens)
    model = tiny_model(tie_word_embeddings=False, shift_logits=True)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(attention_mask=mask, max_new_tokens=12, steps=12, block_length=1, cache="dual", cache_refresh=64,
                 eos_early_stop=False, return_dict_in_generate=True)
    whole = model.generate(x, **knobs)
    windowed = model.generate(x, suffix_window=12, **knobs)
    assert torch.equal(windowed.sequences, whole.sequences)
    assert windowed.num_positions_processed == whole.num_positions_processed == (x.shape[1] + 12 + 11 * 2) * 2


@pytest.mark.parametrize("name", sorted(CACHES))
def test_suffix_window_left_padded_batch_matches_each_prompt_alone(name):
    model = tiny_model(tie_word_embeddings=False)
    x, mask, _ = padded_canvas(new=0)
    knobs = dict(max_new_tokens=12, steps=12, block_length=4, cache=name, suffix_window=4)
    together = model.generate(x, attention_mask=mask, **knobs)
    for row, n in enumerate((6, 3)):
        alone = model.generate(x[row : row + 1, -n:], **knobs)
        assert torch.equal(together[row, -(n + 12) :], alone[0])


def test_suffix_window_refuses_bad_values_and_infilling():
    with pytest.raises(ValueError, match="suffix_window"):
        IlladaGenerationConfig(suffix_window=-1)
    prompt = torch.randint(4, 64, (1, 8), generator=torch.Generator().manual_seed(2))
    prompt[0, [2, 3]] = MASK
    with pytest.raises(ValueError, match="suffix_window.*infilling"):
        tiny_model().generate(prompt, max_new_tokens=0, suffix_window=2)
