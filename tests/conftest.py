"""Shared test set-up: an offline, isolated Hugging Face environment and tiny models.

The environment variables are set before transformers / huggingface_hub are imported (they read them once).
"""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="illada-hf-home-")
os.environ.setdefault("HF_HOME", _HOME)
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(_HOME, "modules"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import modeling_illada  # noqa: E402,F401  (registers the Auto classes)
from modeling_illada import IlladaConfig, IlladaForMaskedDiffusion  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**overrides) -> IlladaConfig:
    fields = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, mask_token_id=3,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )
    fields.update(overrides)
    return IlladaConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> IlladaForMaskedDiffusion:
    torch.manual_seed(seed)
    return IlladaForMaskedDiffusion(tiny_config(**overrides)).eval()


@pytest.fixture
def model():
    return tiny_model()
