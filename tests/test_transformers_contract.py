"""What transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) expect of a model, restated.

transformers' mixins live in its repository's `tests/`, which the wheel does not install, so each behaviour they
check and this package once failed is a test of its own here, on a tiny tester in the style of
`tests/models/llama/test_modeling_llama.py` (`IlladaModelTester`). Config behaviours are in `test_configuration.py`.
"""

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_layers import GradientCheckpointingLayer

from modeling_illada import IlladaConfig, IlladaForMaskedDiffusion, IlladaModel


class IlladaModelTester:
    """Tiny sizes as in transformers' `CausalLMModelTester` (vocab 99, hidden 32, 2 layers, batch 13, length 7)."""

    def __init__(self, batch_size=13, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=37, tie_word_embeddings=False):
        self.batch_size, self.seq_length = batch_size, seq_length
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.config_fields = dict(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
            intermediate_size=intermediate_size, max_position_embeddings=512, mask_token_id=3,
            tie_word_embeddings=tie_word_embeddings,
        )

    def get_config(self, **overrides) -> IlladaConfig:
        return IlladaConfig(**{**self.config_fields, **overrides})

    def prepare_config_and_inputs_for_common(self, seed=0):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(4, self.config_fields["vocab_size"], (self.batch_size, self.seq_length), generator=generator)
        mask = torch.ones_like(ids)
        mask[::2, :3] = 0  # every other row left-padded
        return self.get_config(), {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def tester():
    return IlladaModelTester()


def build(model_class, config, seed=0):
    torch.manual_seed(seed)
    return model_class(config).eval()


# --- outputs ---------------------------------------------------------------------------------------------------


def test_attention_outputs_with_eager(tester):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    for model_class in (IlladaModel, IlladaForMaskedDiffusion):
        model = build(model_class, config)
        model.set_attn_implementation("eager")
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
        assert len(out.attentions) == tester.num_hidden_layers
        weights = out.attentions[0]
        assert tuple(weights.shape) == (tester.batch_size, tester.num_attention_heads, tester.seq_length, tester.seq_length)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))  # each query's weights sum to 1
        assert weights[0, :, :, :3].abs().max() == 0  # padded keys get no weight
        assert weights[1, :, :, :3].min() > 0  # an unpadded row attends everywhere: bidirectional
    # through the config too (the setter picks eager for a model built after it)
    config.output_attentions = True
    with torch.no_grad():
        assert len(build(IlladaForMaskedDiffusion, config)(**inputs).attentions) == tester.num_hidden_layers


def test_output_attentions_with_sdpa_says_how_to_switch(tester):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match=r"set_attn_implementation\('eager'\)"):
        model(**inputs, output_attentions=True)


def test_hidden_states_and_tuple_outputs_keep_transformers_order(tester):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**inputs, output_hidden_states=True, output_attentions=True, return_dict=False)
        base = model.model(**inputs)
    assert len(out.hidden_states) == tester.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[-1], base.last_hidden_state)  # the last one is after the norm
    assert len(as_tuple) == 3  # logits, hidden_states, attentions: attentions last, as transformers' tests check
    torch.testing.assert_close(as_tuple[-1][0], out.attentions[0])


# --- attention through AttentionInterface ------------------------------------------------------------------------

CALLS = []


def recording_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA that notes which keyword arguments reached it (the layer index and every extra kwarg)."""
    CALLS.append((module.layer_idx, sorted(k for k in kwargs if k.startswith("probe"))))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("illada_test_recording", recording_attention)
AttentionMaskInterface.register("illada_test_recording", sdpa_mask)  # the masks it takes: SDPA's


def test_set_attn_implementation_switches_the_kernel(tester, caplog):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        assert "does not support setting its attention implementation" not in caplog.text
        eager = model(**inputs).logits
        CALLS.clear()
        model.set_attn_implementation("illada_test_recording")
        recorded = model(**inputs, probe_flag=True).logits
    assert [layer for layer, _ in CALLS] == [0, 1]  # the registered kernel ran in every layer
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorded, sdpa, atol=1e-6, rtol=1e-6)


def test_decoder_layers_checkpoint_with_their_keyword_arguments(tester):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config).train()
    assert all(isinstance(layer, GradientCheckpointingLayer) for layer in model.model.layers)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.set_attn_implementation("illada_test_recording")
    CALLS.clear()
    model(**inputs, probe_flag=True).logits.square().mean().backward()
    # the forward, then the backward's recomputation (last layer first): every call saw the keyword argument
    assert CALLS == [(0, ["probe_flag"]), (1, ["probe_flag"]), (1, ["probe_flag"]), (0, ["probe_flag"])]


def test_flash_attention_2_missing_is_transformers_own_error(tmp_path, tester):
    build(IlladaForMaskedDiffusion, tester.get_config()).save_pretrained(tmp_path)
    with pytest.raises(ImportError, match="FlashAttention2"):
        IlladaForMaskedDiffusion.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_masks_flash_attention_cannot_take_are_clear_errors(tester):
    """flash-attention takes a 2-D padding mask over as many keys as queries: a 4-D mask, or a cached step of a
    padded batch, is refused by name before any kernel runs (the kernel itself is not needed to check this)."""
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    model.config._attn_implementation = "flash_attention_2"  # as if installed: the refusals come first
    four_d = torch.ones(tester.batch_size, 1, tester.seq_length, tester.seq_length, dtype=torch.bool)
    with pytest.raises(ValueError, match="2-D padding mask only"):
        model(inputs["input_ids"], attention_mask=four_d)
    from transformers import DynamicCache

    cache = DynamicCache()
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        model(inputs["input_ids"][:, :4], attention_mask=inputs["attention_mask"][:, :4], cache=cache)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="use 'sdpa' for cached generation"):
        model(inputs["input_ids"][:, 4:], attention_mask=inputs["attention_mask"], cache=cache,
              position_ids=torch.arange(4, 7)[None].expand(tester.batch_size, -1))


@pytest.mark.slow
def test_flex_attention_matches_sdpa_with_padding(tester):
    """flex-attention runs on CPU (compiled by torch, about 20 s here): a padded batch gives SDPA's logits."""
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation("flex_attention")
        flex = model(**inputs).logits
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


# --- loading -----------------------------------------------------------------------------------------------------


def test_head_loads_from_a_backbone_checkpoint_with_the_head_reported(tmp_path, tester):
    config = tester.get_config()  # untied: the head has its own weight
    backbone = build(IlladaModel, config)
    backbone.save_pretrained(tmp_path)
    model, info = IlladaForMaskedDiffusion.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {"lm_head.weight"} and not info["unexpected_keys"]
    torch.testing.assert_close(model.model.embed_tokens.weight, backbone.embed_tokens.weight, rtol=0, atol=0)
    assert model.lm_head.weight.abs().sum() > 0  # initialised, not left empty


def test_backbone_loads_from_a_head_checkpoint_with_the_head_reported(tmp_path, tester):
    head = build(IlladaForMaskedDiffusion, tester.get_config())
    head.save_pretrained(tmp_path)
    model, info = IlladaModel.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["unexpected_keys"]) == {"lm_head.weight"} and not info["missing_keys"]
    torch.testing.assert_close(model.norm.weight, head.model.norm.weight, rtol=0, atol=0)


def test_from_pretrained_without_a_checkpoint(tester):
    config = tester.get_config()
    for model_class in (IlladaModel, IlladaForMaskedDiffusion):
        source = build(model_class, config)
        again = model_class.from_pretrained(None, config=config, state_dict=source.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(source.parameters(), again.parameters()))
        empty, info = model_class.from_pretrained(None, config=config, state_dict={}, output_loading_info=True)
        assert "model.norm.weight" in info["missing_keys"] or "norm.weight" in info["missing_keys"]


def test_mismatched_shapes_raise_unless_ignored(tmp_path, tester):
    build(IlladaForMaskedDiffusion, tester.get_config()).save_pretrained(tmp_path)
    bigger = tester.get_config(vocab_size=120)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # transformers' own error
        IlladaForMaskedDiffusion.from_pretrained(tmp_path, config=bigger)
    model, info = IlladaForMaskedDiffusion.from_pretrained(tmp_path, config=bigger, ignore_mismatched_sizes=True,
                                                           output_loading_info=True)
    assert model.model.embed_tokens.weight.shape[0] == 120
    assert {key for key, *_ in info["mismatched_keys"]} >= {"model.embed_tokens.weight", "lm_head.weight"}


# --- tracing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True])
def test_torch_export_traces_the_forward(tester, padded):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    kwargs = {"attention_mask": inputs["attention_mask"]} if padded else {}
    program = torch.export.export(model, (inputs["input_ids"],), kwargs=kwargs)
    other = inputs["attention_mask"].flip(0)  # another padding pattern: nothing about the mask was baked in
    run = {"attention_mask": other} if padded else {}
    with torch.no_grad():
        expected = model(inputs["input_ids"], **run).logits
    torch.testing.assert_close(program.module()(inputs["input_ids"], **run).logits, expected, atol=1e-5, rtol=1e-5)


def test_torch_compile_fullgraph_has_no_graph_break(tester):
    """`fullgraph=True` raises at the first graph break; the `eager` backend checks the trace without code generation."""
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": inputs["attention_mask"]}):
            torch.testing.assert_close(compiled(inputs["input_ids"], **kwargs).logits,
                                       model(inputs["input_ids"], **kwargs).logits)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager_mode(tester):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = build(IlladaForMaskedDiffusion, config)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
