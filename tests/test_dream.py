"""Dream-7B's layout and sampler: a Dream folder as the Hub has it loads without Dream's code, gives Dream's logits,
and `diffusion_generate` is Dream's sampler token for token (oracles in `reference_dream.py`)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel

from helpers import CACHED
from modeling_illada import DreamConfig, DreamForMaskedDiffusion, DreamGenerationConfig, load_preset
from modeling_illada.generation_dream import ALGORITHMS
from modeling_illada.presets import read_preset
from reference_dream import dream_forward, dream_sample

MASK = 30
TINY_IDS = dict(mask_token_id=MASK, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # Dream's own ids lie past 40
# A tiny config.json as Dream's repositories write it (Qwen2 names, Dream's model type and remote-code map).
DREAM_JSON = {
    "architectures": ["DreamModel"],
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "model_type": "Dream", "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
    "vocab_size": 40, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
    "tie_word_embeddings": False, "use_cache": False, "use_sliding_window": False, "sliding_window": 128,
    "max_window_layers": 2, "attention_dropout": 0.0, "initializer_range": 0.02, "mask_token_id": MASK,
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32",
}
TRIPWIRE = "raise RuntimeError('Dream remote code was imported')\n"


def dream_state_dict(cfg: dict, seed: int = 0) -> dict:
    """Random weights under Dream's key names (built from the config, not from the package's model)."""
    g = torch.Generator().manual_seed(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (d, d), p + "self_attn.q_proj.bias": (d,),
            p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f), p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
    return {k: (1 + 0.1 * torch.randn(s, generator=g)) if k.endswith("norm.weight") else 0.2 * torch.randn(s, generator=g)
            for k, s in shapes.items()}


@pytest.fixture
def dream_folder(tmp_path):
    folder = tmp_path / "dream"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DREAM_JSON))
    for name in ("configuration_dream.py", "modeling_dream.py", "generation_utils.py"):
        (folder / name).write_text(TRIPWIRE)  # loading must never import Dream's own code
    save_file(dream_state_dict(DREAM_JSON), folder / "model.safetensors")
    return folder


def reference(folder):
    from safetensors.torch import load_file

    sd = load_file(folder / "model.safetensors")
    return lambda x, mask=None, positions=None: dream_forward(sd, DREAM_JSON, x, mask, positions)


def test_dream_folder_loads_without_its_code_and_gives_dreams_logits(dream_folder):
    model = AutoModel.from_pretrained(dream_folder).eval()
    assert type(model) is DreamForMaskedDiffusion and model.config.shift_logits
    assert model.config.mask_token_id == MASK and not model.config.tie_word_embeddings
    assert model.model.layers[0].self_attn.o_proj.bias is None and model.model.layers[0].self_attn.q_proj.bias is not None
    assert set(model.state_dict()) == set(dream_state_dict(DREAM_JSON))
    ids = torch.randint(3, 30, (2, 9))
    with torch.no_grad():
        ours = model(ids).logits
    assert (ours - reference(dream_folder)(ids)).abs().max() <= 2e-5


def test_dream_masks_as_dream_builds_them_and_as_this_package_takes_them(dream_folder):
    model = AutoModel.from_pretrained(dream_folder).eval()
    ids = torch.randint(3, 30, (2, 8))
    ids[0, :3] = 1  # left padding
    mask2d = torch.ones_like(ids)
    mask2d[0, :3] = 0
    real = mask2d.bool()
    mask4d = real[:, None, None, :] & real[:, None, :, None]  # Dream's outer-AND (B, 1, T, T)
    positions = (mask2d.cumsum(-1) - 1).masked_fill(~real, 1)  # Dream's tok_idx
    expected = reference(dream_folder)(ids, mask4d, positions)
    with torch.no_grad():
        dreams_way = model(ids, attention_mask=mask4d, position_ids=positions).logits
        ours = model(ids, attention_mask=mask2d).logits  # positions counted over real tokens
    assert (dreams_way - expected).abs().max() <= 2e-5
    assert (ours[real] - expected[real]).abs().max() <= 2e-5  # padded positions are nobody's context
    alone = model(ids[:1, 3:]).logits
    assert (ours[0, 3:] - alone[0]).abs().max() <= 2e-5


def test_generation_config_json_is_optional_and_dream_keys_do_not_break_loading(dream_folder):
    (dream_folder / "generation_config.json").write_text(json.dumps(
        {"alg": "entropy", "steps": 64, "eps": 1e-3, "temperature": 0.2, "mask_token_id": MASK, "eos_token_id": 2,
         "transformers_version": "4.46.2"}))
    model = AutoModel.from_pretrained(dream_folder)
    assert model.generation_config.temperature == 0.2 and model.generation_config.mask_token_id == MASK


def test_a_saved_dream_model_keeps_its_type_and_our_code(dream_folder, tmp_path):
    model = AutoModel.from_pretrained(dream_folder)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "Dream" and saved["shift_logits"] is True
    assert saved["auto_map"]["AutoModel"] == "modeling_illada.DreamForMaskedDiffusion"
    assert (tmp_path / "saved" / "generation_dream.py").is_file()
    again = AutoModel.from_pretrained(tmp_path / "saved")
    ids = torch.randint(3, 30, (1, 6))
    assert torch.equal(again(ids).logits, model(ids).logits)


# --- the sampler ---------------------------------------------------------------------------------------------------

SETTINGS = [
    dict(alg="origin", temperature=0.0),
    dict(alg="origin", temperature=0.7, top_p=0.9),
    dict(alg="maskgit_plus", temperature=0.0),
    dict(alg="maskgit_plus", temperature=0.5, top_k=8),
    dict(alg="topk_margin", temperature=0.0),
    dict(alg="entropy", temperature=0.2, top_p=0.95),
    dict(alg="entropy", temperature=0.0, alg_temp=0.5),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_diffusion_generate_is_dreams_sampler_token_for_token(dream_folder, settings):
    model = AutoModel.from_pretrained(dream_folder).eval()
    prompt = torch.randint(3, 30, (2, 5))
    torch.manual_seed(7)
    expected = dream_sample(reference(dream_folder), prompt.clone(), MASK, max_new_tokens=10, steps=6, **settings)
    torch.manual_seed(7)
    ours = model.diffusion_generate(prompt, max_new_tokens=10, steps=6, **settings)
    assert torch.equal(ours, expected)
    torch.manual_seed(7)
    assert torch.equal(model.diffusion_generate(prompt, max_new_tokens=10, steps=6, **settings), ours)  # seeded


def test_diffusion_generate_left_padded_batch_matches_dream(dream_folder):
    model = AutoModel.from_pretrained(dream_folder).eval()
    prompt = torch.randint(3, 30, (2, 6))
    prompt[1, :2] = 1
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    expected = dream_sample(reference(dream_folder), prompt.clone(), MASK, 8, 4, alg="entropy", attention_mask=mask)
    ours = model.diffusion_generate(prompt, attention_mask=mask, max_new_tokens=8, steps=4, alg="entropy")
    assert torch.equal(ours, expected)


def test_dream_schedule_reveals_by_hand():
    """8 masks, 4 steps, eps 1e-3: times 1, 0.75025, 0.5005, 0.25075, 0.001 reveal int(8 x 0.24975) = 1, then
    int(7 x 0.33289) = 2, int(5 x 0.49900) = 2, and the last step the 3 left: 1, 2, 2, 3 (LLaDA's split: 2, 2, 2, 2)."""
    config = DreamConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, **TINY_IDS)
    model = DreamForMaskedDiffusion(config).eval()

    def no_mask(step, x, logits):  # random weights may commit the mask id itself, which would hide a reveal
        logits[..., MASK] = float("-inf")
        return logits

    out = model.diffusion_generate(torch.tensor([[3, 4]]), max_new_tokens=8, steps=4, alg="maskgit_plus",
                                   return_dict_in_generate=True, output_history=True,
                                   generation_logits_hook_func=no_mask)
    masks = [int((canvas == MASK).sum()) for canvas in out.history]
    assert [8 - masks[0]] + [a - b for a, b in zip(masks, masks[1:])] == [1, 2, 2, 3]


def test_hooks_history_and_num_return_sequences(dream_folder):
    model = AutoModel.from_pretrained(dream_folder).eval()
    seen = []

    def tokens_hook(step, x, logits):
        seen.append(step)
        x[:, -1] = 5  # Dream's token control: pin the last position
        return x

    out = model.diffusion_generate(torch.randint(3, 30, (1, 4)), max_new_tokens=6, steps=3, alg="maskgit_plus",
                                   num_return_sequences=2, return_dict_in_generate=True, output_history=True,
                                   generation_tokens_hook_func=tokens_hook,
                                   generation_logits_hook_func=lambda step, x, logits: logits)
    assert seen == [None, 0, 1, 2] and out.sequences.shape == (2, 10) and len(out.history) == 3
    assert bool((out.sequences[:, -1] == 5).all())  # (Dream can commit the mask id itself: it is not banned)


def test_generate_with_this_packages_knobs_runs_on_a_dream_model(dream_folder):
    model = AutoModel.from_pretrained(dream_folder).eval()
    prompt = torch.randint(3, 30, (1, 4))
    plain = model.generate(prompt, max_new_tokens=8, steps=8, block_length=4)
    assert plain.shape == (1, 12) and not bool((plain == MASK).any())
    for cache in CACHED:  # exact at each block's first step, approximate after
        out = model.generate(prompt, max_new_tokens=8, steps=8, block_length=4, cache=cache, return_dict_in_generate=True)
        assert out.sequences.shape == (1, 12) and out.num_forward_passes == 8
    fast = model.generate(prompt, max_new_tokens=8, block_length=4, parallel_decoding=True, suffix_window=4)
    assert not bool((fast == MASK).any())


@pytest.mark.parametrize("bad,message", [
    (dict(alg="maskgit"), "allowed"), (dict(alg_temp=-1.0), "alg_temp"), (dict(steps=0), "steps"),
    (dict(eps=0.0), "eps"), (dict(temperature=float("nan")), "temperature"), (dict(frobnicate=1), "Unknown"),
])
def test_bad_dream_settings_are_named(bad, message):
    model = DreamForMaskedDiffusion(DreamConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                max_position_embeddings=32, **TINY_IDS))
    with pytest.raises(ValueError, match=message):
        model.diffusion_generate(torch.tensor([[3, 4]]), max_new_tokens=4, **bad)
    assert set(ALGORITHMS) == {"origin", "maskgit_plus", "topk_margin", "entropy"}


def test_dream_generation_config_defaults_are_dreams():
    config = DreamGenerationConfig()
    assert (config.steps, config.eps, config.alg, config.temperature, config.max_length) == (512, 1e-3, "origin", 0.0, 20)


@pytest.mark.parametrize("name", ["dream-v0-base-7b", "dream-v0-instruct-7b"])
def test_dream_presets_have_the_published_parameter_count(name):
    config, _ = load_preset(name)
    assert type(config) is DreamConfig and config.shift_logits and config.rope_theta == 1e6
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == read_preset(name)["parameters"] == 7_615_616_512
