"""Test set-up: an offline, isolated Hugging Face environment, and the fixtures (the tiny model and its helpers
live in `helpers.py`).

The environment variables are set before transformers / huggingface_hub are imported (they read them once):
pytest imports this file before any test module, and this file imports `helpers` (and so the package) below them.
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
from helpers import tiny_model  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def model():
    return tiny_model()
