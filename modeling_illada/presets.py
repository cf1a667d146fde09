"""Model presets as data (library-only: no Hub file imports this module).

Each JSON file in `configuration/` (installed as `modeling_illada.configuration`) transcribes one upstream
`config.json` and names its source. `load_preset(name)` returns the matching config object (`IlladaConfig`, or
`LladaConfig` for LLaDA's OLMo-style configs) and `IlladaGenerationConfig`. `build_model(name)` makes a model with
random weights of a preset's size on a device, after checking that the weights fit there (an 8B preset needs
about 15 GiB in bfloat16): a clear error before allocating, not an out-of-memory crash halfway.
"""

import json
import os
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from .generation_config import IlladaGenerationConfig


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


GIB = 2**30


def available_memory(device) -> int | None:
    """Bytes free on `device`: CUDA's free memory, or the host's available memory for the CPU; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                fields = dict(line.split(":", 1) for line in meminfo)
            return int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            try:
                return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                return None
    return None


def parameter_count(config) -> int:
    """Parameters of the model `config` describes, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_memory(config, dtype=torch.bfloat16, device="cpu", what: str = "this model") -> int:
    """Raise a `ValueError` before allocating when the weights of `config` in `dtype` do not fit in the memory free
    on `device` (with a 10 % margin); return the bytes they take."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    needed = parameter_count(config) * dtype.itemsize
    free = available_memory(device)
    if free is not None and needed * 1.1 > free:
        raise ValueError(
            f"{what} needs {needed / GIB:.1f} GiB for its {str(dtype).removeprefix('torch.')} weights, but {device} has "
            f"{free / GIB:.1f} GiB free: use a device with more memory, load a checkpoint with `device_map=\"auto\"` "
            f"(which offloads to CPU and disk), or a smaller model (e.g. `num_hidden_layers=` in the preset's overrides)."
        )
    return needed


def build_model(name: str, dtype=torch.bfloat16, device="cpu", seed: int = 0, **overrides):
    """`(model, generation_config)`: a preset's architecture with random weights, in `dtype` on `device`, in eval mode.
    Refused before allocating when the weights do not fit (`check_memory`)."""
    config, generation = load_preset(name, **overrides)
    check_memory(config, dtype, device, what=f"Preset {name!r}")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype)
    model.generation_config = generation
    return model.eval(), generation
