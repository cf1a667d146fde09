"""Diffusion generate(): the schedule, reveal order, invariants, stopping, batching, observability, config.

Most tests use `FakeDenoiser` (no weights, hand-predictable); parity with the published sampler and padding
invariance use a tiny random model; `reference_llada.llada_generate` is the oracle.
"""

import dataclasses
import io
import re
from contextlib import redirect_stdout

import pytest
import torch
from transformers import TextDiffusionStreamer

from helpers import EOS, MASK, FakeDenoiser, tiny_model, word_tokenizer
from modeling_illada import IlladaGenerationConfig
from modeling_illada.caching import CACHES
from modeling_illada.remasking import REMASKING
from reference_llada import llada_generate


def rising(n=64, vocab=64):
    """Candidate at position i is token 10 + i % 40, confidence rising to the right."""
    return [10 + i % 40 for i in range(n)], [1.0 + 0.1 * i for i in range(n)]


def revealed_positions(steps):
    return [s.revealed[0].nonzero().flatten().tolist() for s in steps]


# ----------------------------------------------------------------------------------------------- algorithm


def test_single_block_reveals_by_confidence_one_per_step():
    model = FakeDenoiser(*rising())
    prompt = torch.tensor([[20, 21, 22]])
    seen = []
    out = model.generate(prompt, max_new_tokens=4, steps=4, on_step=seen.append)
    assert out.tolist() == [[20, 21, 22, 13, 14, 15, 16]]
    assert revealed_positions(seen) == [[6], [5], [4], [3]]  # rising confidence: right to left
    assert len(model.calls) == 4


def test_blocks_are_semi_autoregressive_and_follow_the_schedule():
    model = FakeDenoiser(*rising())
    seen = []
    model.generate(torch.tensor([[20, 21]]), max_new_tokens=8, steps=4, block_length=4, on_step=seen.append)
    # 2 blocks x 2 steps, 4 masks per block -> 2 reveals per step, block 0 (cols 2-5) before block 1 (cols 6-9)
    assert revealed_positions(seen) == [[4, 5], [2, 3], [8, 9], [6, 7]]
    assert [s.block for s in seen] == [0, 0, 1, 1]
    assert [(s.block_start, s.block_end) for s in seen] == [(2, 6), (2, 6), (6, 10), (6, 10)]


def test_uneven_schedule_gives_earlier_steps_the_remainder():
    model = FakeDenoiser(*rising())
    seen = []
    model.generate(torch.tensor([[20]]), max_new_tokens=5, steps=3, on_step=seen.append)
    assert [len(r) for r in revealed_positions(seen)] == [2, 2, 1]


def test_prompt_and_revealed_tokens_never_change():
    model = tiny_model()
    prompt = torch.randint(4, 64, (2, 5))
    out = model.generate(prompt, max_new_tokens=8, steps=8, block_length=4, return_dict_in_generate=True,
                         output_history=True, eos_early_stop=False)
    assert torch.equal(out.sequences[:, :5], prompt)
    for before, after in zip(out.history, out.history[1:]):
        was_revealed = before != MASK
        assert torch.equal(after[was_revealed], before[was_revealed])
    assert not bool((out.sequences == MASK).any())


@pytest.mark.parametrize(
    "knobs",
    [dict(max_new_tokens=8, steps=8, block_length=8), dict(max_new_tokens=8, steps=4, block_length=4),
     dict(max_new_tokens=12, steps=6, block_length=4, cfg_scale=1.5)],
)
def test_greedy_output_is_token_identical_to_the_reference_sampler(knobs):
    for seed in range(3):
        model = tiny_model(seed=seed, tie_word_embeddings=False)
        prompt = torch.randint(4, 64, (2, 6), generator=torch.Generator().manual_seed(seed))
        reference = llada_generate(lambda x: model(x).logits, prompt, mask_id=MASK, steps=knobs["steps"],
                                   gen_length=knobs["max_new_tokens"], block_length=knobs["block_length"],
                                   cfg_scale=knobs.get("cfg_scale", 0.0))
        assert not bool((reference == MASK).any()), "precondition: the reference never committed the mask token"
        ours = model.generate(prompt, eos_early_stop=False, **knobs)
        assert torch.equal(ours, reference)


def test_llada_argument_names_are_accepted():
    model = tiny_model(tie_word_embeddings=False)
    prompt = torch.randint(4, 64, (1, 4))
    a = model.generate(prompt, gen_length=8, steps=8, block_length=4, mask_id=MASK, eos_early_stop=False)
    b = model.generate(prompt, max_new_tokens=8, steps=8, block_length=4, eos_early_stop=False)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------- sampling


def test_sampling_is_seeded_and_float64_gumbel_varies():
    model = tiny_model(tie_word_embeddings=False)
    prompt = torch.randint(4, 64, (1, 4))
    run = lambda seed: model.generate(prompt, max_new_tokens=16, temperature=1.0, eos_early_stop=False,
                                      generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    torch.manual_seed(5)
    a = model.generate(prompt, max_new_tokens=8, temperature=1.0, remasking="random")
    torch.manual_seed(5)
    assert torch.equal(a, model.generate(prompt, max_new_tokens=8, temperature=1.0, remasking="random"))


def test_top_k_one_is_greedy():
    model = tiny_model(tie_word_embeddings=False)
    prompt = torch.randint(4, 64, (1, 4))
    greedy = model.generate(prompt, max_new_tokens=8, eos_early_stop=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, temperature=2.0, top_k=1, eos_early_stop=False), greedy)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, temperature=2.0, top_p=1e-6, eos_early_stop=False), greedy)


@pytest.mark.parametrize("remasking", sorted(REMASKING))
def test_every_remasking_strategy_fills_the_canvas(remasking):
    model = tiny_model()
    out = model.generate(torch.randint(4, 64, (2, 3)), max_new_tokens=8, steps=4, block_length=4, remasking=remasking)
    assert out.shape == (2, 11) and not bool((out == MASK).any())


def test_cfg_unconditional_rows_mask_the_prompt():
    targets, strengths = rising()
    model = FakeDenoiser(targets, strengths, conditional_bonus=(50, 5.0))
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=2, steps=2, cfg_scale=1.0)
    cond, uncond = model.calls[0].chunk(2)
    assert cond[0, :2].tolist() == [20, 21] and uncond[0].tolist() == [MASK] * 4
    assert out[0, 2:].tolist() == [50, 50]  # the conditional bonus wins with guidance


# ----------------------------------------------------------------------------------------------- stopping


def eos_at(position, n=64):
    targets, strengths = rising(n)
    targets[position] = EOS
    strengths[position] = 100.0  # committed first
    return targets, strengths


def test_eos_early_stop_skips_later_blocks_and_keeps_the_output():
    prompt = torch.tensor([[20, 21]])
    full = FakeDenoiser(*eos_at(3))
    reference = full.generate(prompt, max_new_tokens=12, steps=12, block_length=4, eos_early_stop=False)
    early = FakeDenoiser(*eos_at(3))
    out = early.generate(prompt, max_new_tokens=12, steps=12, block_length=4, return_dict_in_generate=True)
    assert len(early.calls) == 4 and len(full.calls) == 12
    first_eos = 3
    assert torch.equal(out.sequences[:, : first_eos + 1], reference[:, : first_eos + 1])
    assert out.sequences[0, 6:].tolist() == [EOS] * 8  # after the block: filled with EOS, not masks
    assert EOS not in reference[0, 4:6].tolist()  # the full run wrote text after the end token, in its block:
    assert out.sequences[0, 4:6].tolist() == [EOS, EOS]  # that text is not the answer


def test_logits_eos_inf_bans_eos():
    model = FakeDenoiser(*eos_at(3))
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=4, steps=4, logits_eos_inf=True)
    assert EOS not in out[0, 2:].tolist()


def test_confidence_eos_eot_inf_commits_end_tokens_last_in_the_block():
    model = FakeDenoiser(*eos_at(3))
    seen = []
    model.generate(torch.tensor([[20, 21]]), max_new_tokens=4, steps=4, confidence_eos_eot_inf=True,
                   on_step=seen.append)
    assert revealed_positions(seen)[-1] == [3]


def test_variable_length_appends_blocks_until_eos():
    model = FakeDenoiser(*eos_at(7))
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=16, steps=16, block_length=4, variable_length=True)
    assert out.shape[1] == 2 + 8  # two blocks: EOS landed in the second
    assert [c.shape[1] for c in model.calls] == [6] * 4 + [10] * 4  # no future masks in context


def test_stop_strings_end_variable_length_generation():
    tokenizer = word_tokenizer()
    cat = tokenizer.convert_tokens_to_ids("cat")
    targets, strengths = rising()
    targets[5] = cat
    model = FakeDenoiser(targets, strengths, eos_token_id=63)  # no EOS in play
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=16, steps=16, block_length=4,
                         variable_length=True, stop_strings=["cat"], tokenizer=tokenizer)
    assert out.shape[1] == 6 and out[0, 5] == cat


@pytest.mark.parametrize("cache", sorted(CACHES))
def test_bfloat16_generation_runs_on_cpu(cache):
    model = tiny_model().to(torch.bfloat16)
    prompt = torch.randint(4, 64, (2, 5))
    out = model.generate(prompt, attention_mask=torch.tensor([[1] * 5, [0, 0, 1, 1, 1]]), max_new_tokens=8, steps=8,
                         block_length=4, cache=cache, eos_early_stop=False)
    assert out.shape == (2, 13) and not (out[:, 5:] == MASK).any() and torch.equal(out[:, :5], prompt)


# ----------------------------------------------------------------------------------------------- end of thinking


def test_end_think_boost_raises_one_logit_by_boost_times_progress_to_the_power():
    """iLLaDA's rule on hand-made rows: prompt of 2, budget 4, block = columns 2-5, sequence [7, 8]."""
    from modeling_illada.generation_config import IlladaGenerationConfig as Config
    from modeling_illada.shaping import EndThinkBoost, ShapingContext

    x = torch.tensor([
        [20, 21, 7, MASK, MASK, MASK],  # "7" written: the next token is 8, at column 3
        [20, 21, 9, MASK, MASK, MASK],  # no prefix before column 3: the first token, 7
        [20, 21, 7, 8, MASK, MASK],  # the sequence is written: no boost
    ])
    eligible = (x[:, 2:] == MASK)  # (3, 4)
    logits = torch.zeros(3, 4, 64)
    for power, bonus in ((2.0, 2.0), (3.0, 1.0)):  # progress at column 3 = (3 - 2 + 1) / 4 = 0.5; 8 * 0.5 ** power
        config = Config(end_think_token_ids=[7, 8], end_think_logit_boost=8.0, end_think_boost_power=power)
        out = EndThinkBoost()(logits, ShapingContext(x, eligible, 2, 2, 4, (2,), MASK, config))
        expected = torch.zeros_like(logits)
        expected[0, 1, 8] = expected[1, 1, 7] = bonus
        torch.testing.assert_close(out, expected)
    assert logits.abs().sum() == 0  # the caller's logits are untouched


def test_end_think_boost_closes_the_trace_in_generate():
    model = FakeDenoiser(*rising())  # would write 12 13 14 15
    prompt = torch.tensor([[20, 21]])
    plain = model.generate(prompt, max_new_tokens=4, steps=4)
    boosted = model.generate(prompt, max_new_tokens=4, steps=4, end_think_token_ids=[7, 8], end_think_logit_boost=100.0,
                             end_think_boost_power=1.0)
    assert plain.tolist() == [[20, 21, 12, 13, 14, 15]]
    # step 1: +25 on 7 at column 2; step 2: +50 on 8 at column 3 (continuing "7"); then written, no more boost
    assert boosted.tolist() == [[20, 21, 7, 8, 14, 15]]


def test_end_think_boost_in_variable_length_generation_counts_the_whole_budget():
    model = FakeDenoiser(*rising())
    prompt = torch.tensor([[20, 21]])
    knobs = dict(max_new_tokens=8, steps=8, block_length=4, variable_length=True, end_think_token_ids=[7],
                 end_think_boost_power=1.0)
    # at column 2 the progress is 1/8 of the budget (not 1/4 of a block): a boost of 8 adds 1.0 to token 7, below
    # the denoiser's 1.2 there; a boost of 16 adds 2.0 and wins
    assert model.generate(prompt, end_think_logit_boost=8.0, **knobs)[0, 2] == 12
    assert model.generate(prompt, end_think_logit_boost=16.0, **knobs)[0, 2] == 7


@pytest.mark.parametrize(
    "knobs,message",
    [
        (dict(end_think_logit_boost=100.0), "end_think_token_ids"),
        (dict(end_think_logit_boost=-1.0, end_think_token_ids=[7]), "end_think_logit_boost"),
        (dict(end_think_boost_power="3", end_think_token_ids=[7]), "end_think_boost_power"),
        (dict(end_think_token_ids=[]), "end_think_token_ids"),
    ],
)
def test_bad_end_think_knobs_name_the_parameter(knobs, message):
    with pytest.raises(ValueError, match=message):
        IlladaGenerationConfig(**knobs)


def test_end_think_ids_beyond_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"end_think_token_ids.*vocab_size=64"):
        tiny_model().generate(torch.tensor([[20, 21]]), max_new_tokens=4, end_think_token_ids=[64],
                              end_think_logit_boost=1.0)


# ----------------------------------------------------------------------------------------------- batching


def test_left_padded_batch_matches_each_prompt_alone():
    model = tiny_model(tie_word_embeddings=False)
    long_prompt = torch.randint(4, 64, (1, 7))
    short_prompt = torch.randint(4, 64, (1, 3))
    batch = torch.cat([long_prompt, torch.cat([torch.full((1, 4), 1), short_prompt], 1)])
    mask = torch.tensor([[1] * 7, [0] * 4 + [1] * 3])
    knobs = dict(max_new_tokens=8, steps=8, block_length=4)
    together = model.generate(batch, attention_mask=mask, **knobs)
    assert torch.equal(together[0], model.generate(long_prompt, **knobs)[0])
    alone = model.generate(short_prompt, **knobs)[0]
    assert torch.equal(together[1, 4:], alone)
    assert torch.equal(together[1, :4], torch.full((4,), 1))  # padding untouched


def test_batched_eos_rows_stop_independently():
    targets, strengths = eos_at(3)
    model = FakeDenoiser(targets, strengths)
    prompts = torch.tensor([[20, 21], [22, 23]])
    out = model.generate(prompts, max_new_tokens=8, steps=8, block_length=4)
    assert out.shape == (2, 10) and bool((out[:, 6:] == EOS).all())


# ----------------------------------------------------------------------------------------------- infilling


def test_infilling_fills_masks_in_place_and_touches_nothing_else():
    model = tiny_model(tie_word_embeddings=False)
    text = torch.randint(4, 64, (1, 10))
    holes = text.clone()
    holes[0, [2, 3, 7]] = MASK
    out = model.generate(holes, max_new_tokens=0)
    assert out.shape == text.shape and not bool((out == MASK).any())
    keep = holes != MASK
    assert torch.equal(out[keep], holes[keep])


def test_infilling_with_a_continuation():
    model = FakeDenoiser(*rising())
    holes = torch.tensor([[20, MASK, 22, MASK]])
    seen = []
    out = model.generate(holes, max_new_tokens=2, on_step=seen.append)
    assert out.tolist() == [[20, 11, 22, 13, 14, 15]]
    assert len(seen) == 4  # one block spanning the first hole to the end, one token per step


# ----------------------------------------------------------------------------------------------- observability


def test_return_dict_counts_forwards_and_tokens():
    model = FakeDenoiser(*rising())
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=8, steps=4, return_dict_in_generate=True,
                         output_history=True)
    assert out.num_forward_passes == 4 and out.tokens_per_forward == 2.0 and len(out.history) == 4


def test_threshold_reveals_in_parallel_and_one_reduces_to_plain():
    prompt = torch.tensor([[20, 21]])
    confident = FakeDenoiser([10 + i for i in range(64)], [50.0] * 64)
    out = confident.generate(prompt, max_new_tokens=8, block_length=4, threshold=0.9, return_dict_in_generate=True)
    assert out.num_forward_passes == 2 and out.tokens_per_forward == 4.0
    model = tiny_model(tie_word_embeddings=False)
    plain = model.generate(prompt, max_new_tokens=8, steps=8, block_length=4, eos_early_stop=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, block_length=4, threshold=1.0, eos_early_stop=False), plain)


def test_on_step_receives_frozen_states():
    model = FakeDenoiser(*rising())
    seen = []
    model.generate(torch.tensor([[20, 21]]), max_new_tokens=4, steps=2, on_step=seen.append)
    assert [s.step for s in seen] == [0, 1] and seen[0].prompt_length == 2 and seen[0].mask_token_id == MASK
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].step = 5
    assert int((seen[0].tokens == MASK).sum()) == 2 and int((seen[1].tokens == MASK).sum()) == 0
    revealed = seen[0].revealed
    assert bool(torch.isfinite(seen[0].confidence[revealed]).all()) and bool(seen[0].confidence[~revealed].isnan().all())


def test_on_step_can_stop_generation_and_reports_probabilities():
    model = FakeDenoiser(*rising())
    seen = []
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=8, steps=8, block_length=4,
                         on_step=lambda s: seen.append(s) or len(seen) == 3, return_dict_in_generate=True)
    assert len(seen) == 3 and out.num_forward_passes == 3
    assert int((out.sequences == MASK).sum()) == 5  # stopped after 3 of 8 reveals
    probability = seen[0].probability[seen[0].revealed]
    assert bool(((probability > 0) & (probability <= 1)).all())
    # the fake puts logit strength s on the target among 64 zeros: p = e^s / (e^s + 63)
    strength = 1.0 + 0.1 * 5  # the first reveal is column 5, the last of block 0
    torch.testing.assert_close(probability, torch.tensor([torch.e**strength / (torch.e**strength + 63)]))


def test_pure_infilling_ignores_the_models_default_block_length():
    model = tiny_model(tie_word_embeddings=False)
    model.generation_config.block_length = 4
    holes = torch.randint(4, 64, (1, 10))
    holes[0, [1, 6]] = MASK
    out = model.generate(holes, max_new_tokens=0)
    assert not bool((out == MASK).any())


class CountingStreamer:
    def __init__(self):
        self.puts, self.drafts, self.ends = [], [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def put_draft(self, value):
        self.drafts.append(value.clone())

    def end(self):
        self.ends += 1


def test_streamer_gets_prompt_drafts_blocks_and_end():
    model = FakeDenoiser(*rising())
    streamer = CountingStreamer()
    out = model.generate(torch.tensor([[20, 21]]), max_new_tokens=8, steps=4, block_length=4, streamer=streamer)
    assert len(streamer.drafts) == 4 and streamer.ends == 1
    assert [p.tolist() for p in streamer.puts] == [[[20, 21]], out[:, 2:6].tolist(), out[:, 6:].tolist()]
    assert streamer.drafts[0].shape == (1, 8) and int((streamer.drafts[0] == MASK).sum()) == 6


def test_transformers_text_diffusion_streamer_works_unchanged():
    tokenizer = word_tokenizer()
    words = [tokenizer.convert_tokens_to_ids(w) for w in ("the", "cat", "sat", "on", "a", "mat")]
    model = FakeDenoiser(words * 10, [1.0 + 0.1 * i for i in range(60)])
    prompt = torch.tensor([tokenizer.convert_tokens_to_ids(["the", "dog"])])
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        model.generate(prompt, max_new_tokens=4, steps=4, streamer=TextDiffusionStreamer(tokenizer))
    printed = buffer.getvalue()
    assert "<mask> <mask> a mat" in printed  # a draft, shown while denoising
    committed = re.sub("\0337.*?\0338\033\\[J", "", printed)  # drafts are drawn between save / restore-and-clear
    assert committed == "the dog sat on a mat\n"


def test_diffusion_generate_reads_an_unshifted_model_in_place():
    """Dream's sampler on a LLaDA-style model: column j takes output j's prediction (Dream's own shift would put
    output j - 1's there)."""
    targets = torch.arange(10, 40)  # the denoiser predicts token 10 + j at column j
    model = FakeDenoiser(targets, torch.full((30,), 5.0))
    prompt = torch.tensor([[11, 12, 13]])
    out = model.diffusion_generate(prompt, max_new_tokens=6, steps=3, alg="maskgit_plus")
    assert out[0, 3:].tolist() == targets[3:9].tolist()
    with pytest.raises(ValueError, match="alg"):
        model.diffusion_generate(prompt, alg="nope")


def test_text_diffusion_streamer_takes_one_row():
    """transformers' `TextDiffusionStreamer` streams batch 1; a batch is its own clear error, before any step."""
    model = FakeDenoiser(*rising())
    with pytest.raises(ValueError, match="batch size 1"):
        model.generate(torch.tensor([[20, 21], [22, 23]]), max_new_tokens=4, streamer=TextDiffusionStreamer(word_tokenizer()))
    assert not model.calls


# ----------------------------------------------------------------------------------------------- config


def test_generation_config_round_trips_and_saves_temperature_zero(tmp_path):
    config = IlladaGenerationConfig(gen_length=64, steps=32, block_length=16, remasking="margin", temperature=0.0,
                                    mask_id=7, cfg_scale=0.5, threshold=0.9)
    config.save_pretrained(tmp_path)
    again = IlladaGenerationConfig.from_pretrained(tmp_path)
    assert again.knobs() == config.knobs() and again.max_new_tokens == 64 and again.mask_token_id == 7


def test_official_generation_config_with_autoregressive_keys_loads(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        '{"bos_token_id": 0, "eos_token_id": 2, "do_sample": true, "top_p": 0.9, "num_beams": 1, "transformers_version": "4.57.1"}'
    )
    config = IlladaGenerationConfig.from_pretrained(tmp_path)
    assert (config.eos_token_id, config.top_p) == (2, 0.9) and not hasattr(config, "num_beams")


def test_model_generation_defaults_load_from_the_folder(tmp_path):
    model = tiny_model()
    model.generation_config = IlladaGenerationConfig(max_new_tokens=8, steps=4, block_length=4, mask_token_id=MASK)
    model.save_pretrained(tmp_path)
    from transformers import AutoModel

    again = AutoModel.from_pretrained(tmp_path)
    assert type(again.generation_config) is IlladaGenerationConfig
    assert (again.generation_config.steps, again.generation_config.block_length) == (4, 4)
    assert again.generate(torch.randint(4, 64, (1, 3))).shape == (1, 11)

    # `max_new_tokens` alone works whatever the saved schedule (see the next test); given knobs are used as given
    assert again.generate(torch.randint(4, 64, (1, 3)), max_new_tokens=6).shape == (1, 9)
    assert again.generation_config.block_length == 4  # the model's defaults are untouched
    with pytest.raises(ValueError, match="block_length"):
        again.generate(torch.randint(4, 64, (1, 3)), max_new_tokens=2, block_length=4)


@pytest.mark.parametrize(
    "saved,length,expected",
    [
        # (saved max_new_tokens, steps, block_length), new length -> (block_length, steps)
        ((64, 64, 32), 96, (32, 96)),  # the case: 1 token per step kept, 3 blocks of 32
        ((64, 32, 32), 96, (32, 48)),  # 2 tokens per step kept
        ((64, 64, 32), 16, (16, 16)),  # shorter than a block: one block
        ((64, 32, 32), 100, (25, 52)),  # 32 does not divide 100: blocks of 25; 50 steps -> 52, a multiple of 4 blocks
        ((64, None, 32), 96, (32, None)),  # one token per step stays the default
        ((8, 4, 4), 6, (3, 4)),  # 3 steps -> 4, a multiple of 2 blocks
    ],
)
def test_max_new_tokens_alone_keeps_the_saved_tokens_per_step(saved, length, expected):
    max_new_tokens, steps, block_length = saved
    config = IlladaGenerationConfig(max_new_tokens=max_new_tokens, steps=steps, block_length=block_length)
    merged = config.merged(max_new_tokens=length)
    assert (merged.max_new_tokens, merged.block_length, merged.steps) == (length, *expected)
    assert config.merged(max_new_tokens=length, steps=length).steps == length  # a given knob is kept


def test_generate_with_only_max_new_tokens_on_a_saved_schedule():
    model = tiny_model()
    model.generation_config = IlladaGenerationConfig(max_new_tokens=64, steps=64, block_length=32, mask_token_id=MASK)
    out = model.generate(torch.randint(4, 64, (1, 3)), max_new_tokens=96, return_dict_in_generate=True,
                         eos_early_stop=False)
    assert out.sequences.shape == (1, 99) and out.num_forward_passes == 96 and not (out.sequences == MASK).any()


@pytest.mark.parametrize(
    "knobs,message",
    [
        (dict(max_new_tokens=10, block_length=4), "block_length"),
        (dict(max_new_tokens=8, block_length=4, steps=3), "steps"),
        (dict(remasking="lowest"), "low_confidence"),
        (dict(temperature=-0.5), "temperature"),
        (dict(schedule="exp"), "linear"),
        (dict(threshold=1.5), "threshold"),
        (dict(num_beams=4), "num_beams"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_bad_generation_knobs_name_the_parameter(knobs, message):
    with pytest.raises(ValueError, match=message):
        IlladaGenerationConfig(**knobs)
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(torch.randint(4, 64, (1, 3)), **knobs)


def test_missing_mask_token_and_too_long_prompt_are_clear_errors():
    model = tiny_model(mask_token_id=None)
    with pytest.raises(ValueError, match="mask token id"):
        model.generate(torch.randint(4, 64, (1, 3)), max_new_tokens=4)
    model = tiny_model()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(torch.randint(4, 64, (1, 100)), max_new_tokens=64)
    with pytest.raises(ValueError, match="nothing to generate"):
        model.generate(torch.randint(4, 64, (1, 3)), max_new_tokens=0)
    with pytest.raises(ValueError, match="stop_strings"):
        model.generate(torch.randint(4, 64, (1, 3)), max_new_tokens=4, stop_strings=["x"])
