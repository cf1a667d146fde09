"""How checkpoints load and save, beside the model (a Hub file, shipped with every checkpoint).

Differs from transformers' defaults in three ways, each stated here once:

* LLaDA's OLMo-style keys (`model.transformer.blocks.N.attn_out`, ...) are renamed to ours on load through
  transformers' conversion-mapping registry (`LLADA_KEY_MAPPING`), so the official folders load into our classes;
* loading is strict: backbone weights missing from or unknown to the model, or non-finite weights, are an error
  naming the keys (transformers only warns); a missing LM head is initialised and warned about (`check_loaded`);
* a save writes a complete `auto_map` naming the head class of the model type (`auto_map`).
"""

import os

import torch
from transformers.utils import logging

from .configuration_illada import DreamConfig, LladaConfig

logger = logging.get_logger(__name__)

# LLaDA (OLMo-style) checkpoint keys -> ours. Applied in order when a checkpoint of model_type "llada" loads.
# Each rule is a no-op on keys already in our layout, so a folder saved by this package reloads unchanged.
LLADA_KEY_MAPPING = {
    r"model.transformer.ff_out.": "lm_head.",
    r"transformer.wte.": "embed_tokens.",
    r"transformer.ln_f.": "norm.",
    r"transformer.blocks.": "layers.",
    r".attn_norm.": ".input_layernorm.",
    r".ff_norm.": ".post_attention_layernorm.",
    r"(?<!self_attn)\.q_proj\.": ".self_attn.q_proj.",
    r"(?<!self_attn)\.k_proj\.": ".self_attn.k_proj.",
    r"(?<!self_attn)\.v_proj\.": ".self_attn.v_proj.",
    r".attn_out.": ".self_attn.o_proj.",
    r".ff_proj.": ".mlp.gate_proj.",
    r"(?<!mlp)\.up_proj\.": ".mlp.up_proj.",
    r".ff_out.": ".mlp.down_proj.",
}


def register_llada_key_mapping():
    """Teach transformers' loader the LLaDA layout (works for the installed package and for remote code)."""
    try:
        from transformers.conversion_mapping import register_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # pragma: no cover - transformers without the conversion-mapping API
        return
    renamings = [WeightRenaming(source, target) for source, target in LLADA_KEY_MAPPING.items()]
    register_checkpoint_conversion_mapping(LladaConfig.model_type, renamings, overwrite=True)


register_llada_key_mapping()


def is_head_key(name: str) -> bool:
    """A weight of the LM head, the one module of `IlladaForMaskedDiffusion` outside the backbone (`IlladaModel`)."""
    return name.startswith("lm_head.")


def check_model_folder(name) -> None:
    """A folder without config.json is not a saved model: say so before transformers looks for one on the Hub."""
    if isinstance(name, (str, os.PathLike)) and os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise ValueError(f"{name} is a folder without config.json: not a saved model (save one with "
                         "`model.save_pretrained(folder)`, or pass the folder that holds config.json).")


def check_loaded(class_name: str, model, info: dict, strict: bool) -> None:
    """After `from_pretrained`: with `strict`, backbone keys missing or unexpected and NaN / infinite weights are an
    error; a missing LM head (a backbone checkpoint) is always a warning."""
    if strict:
        problems = {kind: sorted(k for k in info.get(kind) or () if not is_head_key(k))
                    for kind in ("missing_keys", "unexpected_keys")}
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            details = "; ".join(f"{k}: {v[:10]}{' ...' if len(v) > 10 else ''}" for k, v in problems.items())
            raise ValueError(
                f"Checkpoint does not match {class_name} ({details}). Pass `strict=False` to load anyway "
                "(what is missing is then randomly initialised)."
            )
        broken = [k for k, v in model.state_dict().items() if v.is_floating_point() and v.device.type != "meta"
                  and not bool(torch.isfinite(v).all())]
        if broken:
            raise ValueError(f"The checkpoint holds NaN or infinite weights in {broken[:8]}"
                             f"{' ...' if len(broken) > 8 else ''}: it is damaged. Pass `strict=False` to load it "
                             "anyway.")
    missing_head = sorted(k for k in info.get("missing_keys") or () if is_head_key(k))
    if missing_head:
        logger.warning(f"{missing_head} not in the checkpoint (a backbone checkpoint?): initialised at random; "
                       "train the head before generating.")


# The head class a save names for each model type (`IlladaForMaskedDiffusion` for the rest).
HEAD_CLASS_NAMES = {LladaConfig.model_type: "LladaForMaskedDiffusion", DreamConfig.model_type: "DreamForMaskedDiffusion"}


def head_class_name(config) -> str:
    return HEAD_CLASS_NAMES.get(config.model_type, "IlladaForMaskedDiffusion")


def auto_map(config) -> dict:
    """The `auto_map` of a saved folder: our config class and head class in the code files saved alongside."""
    head = head_class_name(config)
    return {
        "AutoConfig": f"configuration_illada.{type(config).__name__}",
        "AutoModel": f"modeling_illada.{head}",
        "AutoModelForMaskedLM": f"modeling_illada.{head}",
    }


__all__ = ["LLADA_KEY_MAPPING", "HEAD_CLASS_NAMES", "auto_map", "check_loaded", "check_model_folder", "head_class_name",
           "is_head_key", "register_llada_key_mapping"]
