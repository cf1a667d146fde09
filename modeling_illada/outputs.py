"""Outputs of the diffusion head (a Hub file), in the field names of the installed transformers.

Differs from transformers' `MaskedLMOutput`: the logits are x_0 predictions at every kept position (mask tokens
included), and the output carries the cache under the name the installed transformers uses for it.
"""

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput

# transformers 5.24 renamed the cache of model outputs and forwards from `past_key_values` to `cache` (outputs take
# only the new name). Outputs here use the installed version's name; forwards accept both.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _cache_field_before_hidden_states(cls):
    """Make `cls` a dataclass with a cache field (`CACHE_FIELD`, default None) placed before `hidden_states`, so
    the field order, and with it `to_tuple()`, is the same under either name."""
    annotations = {}
    for name, kind in cls.__annotations__.items():
        if name == "hidden_states":
            annotations[CACHE_FIELD] = object | None
            setattr(cls, CACHE_FIELD, None)
        annotations[name] = kind
    cls.__annotations__ = annotations
    return dataclass(cls)


@_cache_field_before_hidden_states
class IlladaMaskedDiffusionOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*): masked-diffusion loss, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch, kept positions, vocab)`): x_0 predictions.
        cache / past_key_values (*optional*): the cache passed in, updated; the field has the installed
            transformers' name (`cache` from 5.24, where `past_key_values` still reads it).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): per-layer states with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): per-layer attention weights `(batch, heads, query,
            key)` with `output_attentions=True` (eager attention).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


__all__ = ["CACHE_FIELD", "IlladaMaskedDiffusionOutput"]
