"""illada: Hub-native masked diffusion language models (iLLaDA, LLaDA) for transformers.

Importing the package registers the model types `illada`, `llada` and `Dream` with transformers' Auto classes, so
`AutoModel.from_pretrained(folder)` loads each official layout without running its remote code, and marks the classes
for `auto_map` so every `save_pretrained` / `push_to_hub` writes a folder that loads with
`trust_remote_code=True` where the package is not installed.

The modules imported here are the flat files that ship with a checkpoint; library-only parts (training, adaptation,
distillation, evaluation) are separate modules that no Hub file imports, and the `illada` console script is the
top-level module `illada_cli` (so that `illada --help` imports neither torch nor transformers).
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from .configuration_illada import DreamConfig, IlladaConfig, LladaConfig
from .generation_dream import DreamGenerationConfig, DreamGenerationOutput
from .denoising import DenoisingStep
from .generation_config import IlladaGenerationConfig
from .generation_illada import IlladaGenerationMixin, IlladaGenerationOutput
from .likelihood import IlladaLikelihoodMixin, confidence_log_likelihood, elbo, log_likelihood, monte_carlo_log_likelihood
from .modeling_illada import (
    DreamForMaskedDiffusion,
    IlladaForMaskedDiffusion,
    IlladaMaskedDiffusionOutput,
    IlladaModel,
    IlladaPreTrainedModel,
    LladaForMaskedDiffusion,
)
from .demo import demo_model_path
from .presets import list_presets, load_preset

__version__ = "0.1.0"


def _register():
    for config_class, model_class in ((IlladaConfig, IlladaForMaskedDiffusion), (LladaConfig, LladaForMaskedDiffusion),
                                      (DreamConfig, DreamForMaskedDiffusion)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForMaskedLM.register(config_class, model_class, exist_ok=True)
        # Saving then copies the flat code files; IlladaPreTrainedModel.save_pretrained completes auto_map.
        config_class.register_for_auto_class("AutoConfig")
        model_class.register_for_auto_class("AutoModel")


_register()

__all__ = [
    "IlladaConfig",
    "LladaConfig",
    "DreamConfig",
    "DreamForMaskedDiffusion",
    "DreamGenerationConfig",
    "DreamGenerationOutput",
    "IlladaPreTrainedModel",
    "IlladaModel",
    "IlladaForMaskedDiffusion",
    "LladaForMaskedDiffusion",
    "IlladaMaskedDiffusionOutput",
    "IlladaGenerationConfig",
    "IlladaGenerationMixin",
    "IlladaGenerationOutput",
    "DenoisingStep",
    "IlladaLikelihoodMixin",
    "log_likelihood",
    "monte_carlo_log_likelihood",
    "confidence_log_likelihood",
    "elbo",
    "list_presets",
    "load_preset",
    "demo_model_path",
]
