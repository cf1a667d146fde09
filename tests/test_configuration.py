"""IlladaConfig / LladaConfig: field names, both official config.json layouts, presets and bad input."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel

from helpers import tiny_config
from modeling_illada import IlladaConfig, LladaConfig, list_presets, load_preset
from modeling_illada.presets import read_preset


def test_illada_official_config_reads_with_mask_id_5(tmp_path):
    official = read_preset("illada-8b-base")["config"]
    assert "mask_token_id" not in official  # as published
    (tmp_path / "config.json").write_text(json.dumps(official))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, IlladaConfig)
    assert (config.hidden_size, config.num_key_value_heads, config.intermediate_size) == (4096, 8, 14336)
    assert config.mask_token_id == 5 and config.tie_word_embeddings is True
    assert (config.bos_token_id, config.pad_token_id, config.eos_token_id) == (0, 1, 2)


def test_llada_official_config_maps_olmo_names(tmp_path):
    official = read_preset("llada-8b-instruct")["config"]
    (tmp_path / "config.json").write_text(json.dumps(official))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LladaConfig) and config.model_type == "llada"
    assert config.hidden_size == official["d_model"]
    assert config.num_hidden_layers == official["n_layers"]
    assert config.num_attention_heads == config.num_key_value_heads == official["n_heads"]
    assert config.intermediate_size == official["mlp_hidden_size"]
    assert config.max_position_embeddings == official["max_sequence_length"]
    assert config.tie_word_embeddings is False
    assert config.mask_token_id == official["mask_token_id"]
    assert config.rms_norm_eps == official["rms_norm_eps"] and config.rope_full_precision is True
    assert not hasattr(config, "d_model") and not hasattr(config, "init_fn")


def test_llada_config_round_trips(tmp_path):
    config, _ = load_preset("llada-8b-base")
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert type(again) is LladaConfig
    for name in ("hidden_size", "num_key_value_heads", "intermediate_size", "vocab_size", "mask_token_id",
                 "tie_word_embeddings", "rope_full_precision", "rms_norm_eps"):
        assert getattr(again, name) == getattr(config, name)


@pytest.mark.parametrize(
    "name,published",
    [("llada-8b-base", 8_015_581_184), ("llada-8b-instruct", 8_015_581_184), ("llada-1.5", 8_015_581_184),
     ("illada-8b-base", 7_615_025_152), ("illada-8b-instruct", 7_615_025_152)],
)
def test_preset_parameter_counts_match_published(name, published):
    config, _ = load_preset(name)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == published == read_preset(name)["parameters"]


def test_every_preset_names_its_source_and_builds():
    assert {"illada-8b-base", "illada-8b-instruct", "llada-8b-base", "llada-8b-instruct", "llada-1.5", "tiny-random"} <= set(list_presets())
    for name in list_presets():
        preset = read_preset(name)
        assert preset["_source"]
        config, generation = load_preset(name)
        assert config.mask_token_id is not None and generation.mask_token_id == config.mask_token_id


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(mask_token_id=64, vocab_size=64), "mask_token_id"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
    ],
)
def test_bad_architecture_is_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**fields)


def test_extra_attributes_are_kept_through_save_and_load(tmp_path):
    """transformers' config contract (its common tests set `layer_norm_eps = 1.0` on every config): a key the config
    does not declare is an attribute, written to config.json and read back; the architecture is unchanged."""
    config = tiny_config(layer_norm_eps=1.0, my_note="kept")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["layer_norm_eps"] == 1.0
    again = AutoConfig.from_pretrained(tmp_path)
    assert (again.layer_norm_eps, again.my_note, again.rms_norm_eps) == (1.0, "kept", 1e-6)
    assert {**again.to_dict(), "_name_or_path": ""} == config.to_dict()


def test_config_follows_transformers_common_properties(tmp_path):
    """What transformers' `ConfigTester` checks: defaults without arguments, JSON round trip, subfolders, num_labels."""
    config = IlladaConfig()
    assert (config.hidden_size, config.head_dim, config.mask_token_id) == (4096, 128, 5)
    assert IlladaConfig.from_dict(json.loads(config.to_json_string())).to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "sub")
    again = IlladaConfig.from_pretrained(tmp_path, subfolder="sub")
    assert {**again.to_dict(), "_name_or_path": ""} == config.to_dict()
    assert IlladaConfig(num_labels=5).num_labels == 5


def test_unsupported_llada_variants_are_refused():
    with pytest.raises(ValueError, match="alibi"):
        LladaConfig(d_model=32, n_layers=1, n_heads=4, alibi=True)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        LladaConfig(hidden_size=32, num_experts=8)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="tiny-random"):
        load_preset("no-such-model")


def test_a_preset_that_does_not_fit_is_refused_before_allocating(monkeypatch):
    from modeling_illada import presets

    monkeypatch.setattr(presets, "available_memory", lambda device: 4 * presets.GIB)
    with pytest.raises(ValueError, match=r"'illada-8b-base' needs 14\.2 GiB for its bfloat16 weights.*4\.0 GiB free"):
        presets.build_model("illada-8b-base", dtype=torch.bfloat16)
    model, generation = presets.build_model("tiny-random", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and not model.training and generation.block_length == 8
