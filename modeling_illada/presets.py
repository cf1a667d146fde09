"""Model presets as data (library-only: no Hub file imports this module).

Each JSON file in `configuration/` (installed as `modeling_illada.configuration`) transcribes one upstream
`config.json` and names its source. `load_preset(name)` returns the matching config object (`IlladaConfig`, or
`LladaConfig` for LLaDA's OLMo-style configs) and `IlladaGenerationConfig`.
"""

import json
from importlib import resources
from pathlib import Path

from transformers import AutoConfig

from .generation_illada import IlladaGenerationConfig


def _preset_dir():
    try:
        return resources.files("modeling_illada.configuration")
    except ModuleNotFoundError:  # running from a checkout without installing: the folder beside the package
        return Path(__file__).resolve().parent.parent / "configuration"


def list_presets() -> list[str]:
    """Names of the shipped presets (file names without `.json`)."""
    return sorted(p.name[: -len(".json")] for p in _preset_dir().iterdir() if p.name.endswith(".json"))


def read_preset(name: str) -> dict:
    """The raw preset: `_source`, `_notes`, `hub_id`, `parameters` (published count), `config`, `generation_config`."""
    names = list_presets()
    if name not in names:
        raise ValueError(f"Unknown preset {name!r}; available: {names}.")
    return json.loads((_preset_dir() / f"{name}.json").read_text())


def load_preset(name: str, **overrides):
    """`(config, generation_config)` for a preset; `overrides` replace config fields (e.g. `num_hidden_layers=2`)."""
    from . import configuration_illada  # noqa: F401  (registers nothing; keeps the import graph explicit)

    preset = read_preset(name)
    fields = dict(preset["config"])
    model_type = fields.pop("model_type")
    fields.pop("architectures", None)
    fields.update(overrides)
    config = AutoConfig.for_model(model_type, **fields)
    return config, IlladaGenerationConfig(**preset["generation_config"])
