"""Configuration of iLLaDA / LLaDA masked diffusion language models.

`IlladaConfig` is a Llama-style architecture description (transformers' standard field names) plus
`mask_token_id`, the id of the token the diffusion process writes over the canvas, and `shift_logits`, which says
which output predicts which token. It differs from `LlamaConfig` in four ways:

* there is no causal flag: these models are bidirectional by construction;
* `shift_logits`: LLaDA and iLLaDA predict token i at output i; a model adapted from an autoregressive one (Dream,
  `illada adapt`) keeps its head's alignment, output i predicting token i + 1;
* it reads the official checkpoint configs as published: iLLaDA's `config.json` (HF names, no `mask_token_id`,
  mask id 5), LLaDA's OLMo-style `config.json` (`d_model`, `n_layers`, ...) and Dream's Qwen2-style one;
* decoding knobs never live here: they belong to `IlladaGenerationConfig`.

Like every transformers config it keeps keys it does not know as attributes (saved and reloaded), so a config.json
with extra fields loads; only values the model cannot reproduce (RoPE scaling, LLaDA's LayerNorm / ALiBi / MoE
variants) are refused.

`LladaConfig` and `DreamConfig` are the same class under `model_type = "llada"` and `"Dream"`, so that LLaDA-8B /
LLaDA-1.5 and Dream-7B folders load through the Auto classes and are saved back under their own model type.
"""

import difflib
import inspect
import math

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import logging

logger = logging.get_logger(__name__)


# OLMo-style names used by LLaDA's `config.json` -> our field names.
LLADA_RENAMES = {
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "mlp_hidden_size": "intermediate_size",
    "max_sequence_length": "max_position_embeddings",
    "weight_tying": "tie_word_embeddings",
}

# LLaDA settings our implementation reproduces only at these values; anything else is refused by name.
LLADA_REQUIRED = {
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "activation_type": ("silu", "swiglu"),
    "alibi": (False,),
    "rope": (True,),
    "attention_layer_norm": (False,),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
    "clip_qkv": (None,),
    "layer_norm_with_affine": (True,),
    "bias_for_layer_norm": (False, None),
}

# LLaDA keys that describe training, initialisation or kernels and do not change the forward pass.
LLADA_IGNORED = (
    "mlp_ratio", "multi_query_attention", "alibi_bias_max", "include_qkv_bias",
    "attention_dropout", "residual_dropout", "embedding_dropout", "flash_attention", "block_group_size",
    "init_fn", "init_std", "init_device", "init_cutoff_factor", "precision", "attention_layer_norm_with_affine",
    "embedding_size", "include_bias", "n_kv_heads", "activation_type", "block_type", "layer_norm_type",
    "alibi", "rope", "attention_layer_norm", "input_emb_norm", "scale_logits", "clip_qkv",
    "layer_norm_with_affine", "bias_for_layer_norm", "use_cache",
)


def _translate_llada_kwargs(kwargs: dict) -> dict:
    """Map LLaDA's OLMo-style config keys onto `IlladaConfig` fields (in place) and refuse what we cannot run."""
    if "num_experts" in kwargs or "moe_intermediate_size" in kwargs:
        raise ValueError(
            "This config describes a mixture-of-experts model (LLaDA-MoE uses model_type 'llada' too); "
            "illada implements the dense LLaDA/iLLaDA architecture only."
        )
    for key, allowed in LLADA_REQUIRED.items():
        if key in kwargs and kwargs[key] not in allowed:
            raise ValueError(f"LLaDA config field `{key}`={kwargs[key]!r} is not supported; allowed: {allowed}.")
    for old, new in LLADA_RENAMES.items():
        if old in kwargs:
            value = kwargs.pop(old)
            if new not in kwargs:
                kwargs[new] = value
    if "n_kv_heads" in kwargs or "multi_query_attention" in kwargs:
        if kwargs.get("multi_query_attention"):
            kwargs.setdefault("num_key_value_heads", 1)
        elif kwargs.get("n_kv_heads") is not None:
            kwargs.setdefault("num_key_value_heads", kwargs["n_kv_heads"])
    if "embedding_size" in kwargs and kwargs["embedding_size"] is not None:
        # The embedding matrix has `embedding_size` rows (vocab padded to a multiple of 128): that is the
        # number of logits the checkpoint produces.
        kwargs["vocab_size"] = max(kwargs.get("vocab_size") or 0, kwargs["embedding_size"])
    if "include_bias" in kwargs:
        kwargs.setdefault("attention_bias", bool(kwargs["include_bias"] or kwargs.get("include_qkv_bias")))
        kwargs.setdefault("mlp_bias", bool(kwargs["include_bias"]))
    if kwargs.get("intermediate_size") is None and "mlp_ratio" in kwargs and "hidden_size" in kwargs:
        kwargs["intermediate_size"] = kwargs["mlp_ratio"] * kwargs["hidden_size"]
    for key in LLADA_IGNORED:
        kwargs.pop(key, None)
    return kwargs


class IlladaConfig(PreTrainedConfig):
    r"""
    Architecture of a bidirectional Llama-style masked diffusion LM (iLLaDA-8B by default).

    Args:
        vocab_size (`int`, defaults to 155136): rows of the embedding matrix and number of logits.
        hidden_size (`int`, defaults to 4096): width of the residual stream.
        intermediate_size (`int`, defaults to 14336): width of the SwiGLU MLP.
        num_hidden_layers (`int`, defaults to 32): number of transformer layers.
        num_attention_heads (`int`, defaults to 32): query heads.
        num_key_value_heads (`int`, *optional*): key/value heads (grouped-query attention); defaults to
            `num_attention_heads`.
        head_dim (`int`, *optional*): defaults to `hidden_size // num_attention_heads`.
        hidden_act (`str`, defaults to `"silu"`): MLP activation.
        max_position_embeddings (`int`, defaults to 8192): longest sequence the model accepts.
        rope_theta (`float`, defaults to 500000.0): RoPE base.
        rms_norm_eps (`float`, defaults to 1e-6): RMSNorm epsilon.
        attention_bias / mlp_bias (`bool`, defaults to `False`): biases in projections.
        attention_output_bias (`bool`, *optional*): bias of the attention output projection; defaults to
            `attention_bias` (Llama). Qwen2 and Dream have biases on q/k/v and none on o: `attention_bias=True,
            attention_output_bias=False`.
        attention_dropout (`float`, defaults to 0.0).
        initializer_range (`float`, defaults to 0.02): std of the normal init.
        tie_word_embeddings (`bool`, defaults to `True`): share the embedding with the LM head.
        rope_full_precision (`bool`, defaults to `False`): rotate q/k in float32 (LLaDA) rather than in the
            activations' dtype (Llama, iLLaDA). Identical in float32; differs in the last bits in bfloat16.
        shift_logits (`bool`, defaults to `False`): output i predicts token i + 1, as in the autoregressive model the
            checkpoint was adapted from (Dream, `illada adapt`); a masked token at position j is then read from output
            j - 1, and position 0 is never masked. `False` (LLaDA, iLLaDA): output i predicts token i.
        mask_token_id (`int`, defaults to 5): the diffusion mask token (iLLaDA: 5; LLaDA: its config.json says).
        bos_token_id / eos_token_id / pad_token_id: special ids (iLLaDA: 0 / 2 / 1).

    Example:

    ```python
    >>> from modeling_illada import IlladaConfig, IlladaForMaskedDiffusion
    >>> config = IlladaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                       num_attention_heads=4, num_key_value_heads=2, mask_token_id=3)
    >>> model = IlladaForMaskedDiffusion(config)
    ```
    """

    model_type = "illada"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = 155136,
        hidden_size: int = 4096,
        intermediate_size: int = 14336,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 8,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 8192,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-6,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        attention_output_bias: bool | None = None,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        rope_full_precision: bool = False,
        shift_logits: bool = False,
        mask_token_id: int | None = 5,
        bos_token_id: int | None = 0,
        eos_token_id: int | list[int] | None = 2,
        pad_token_id: int | None = 1,
        **kwargs,
    ):
        rope_scaling = kwargs.pop("rope_scaling", None)
        rope_parameters = kwargs.pop("rope_parameters", None)
        for name, value in (("rope_scaling", rope_scaling), ("rope_parameters", rope_parameters)):
            if value is not None and value.get("rope_type", value.get("type", "default")) != "default":
                raise ValueError(f"`{name}`={value!r} is not supported: iLLaDA and LLaDA use plain RoPE (rope_type 'default').")
            if value is not None and "rope_theta" in value:
                rope_theta = value["rope_theta"]

        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = float(rms_norm_eps)
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.attention_output_bias = attention_bias if attention_output_bias is None else attention_output_bias
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.rope_full_precision = rope_full_precision
        self.shift_logits = shift_logits
        self.mask_token_id = mask_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self._validate_architecture()
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._warn_misspelt(kwargs)
        super().__init__(**kwargs)

    def _validate_architecture(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads}), or set `head_dim` explicitly."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by `num_key_value_heads` "
                f"({self.num_key_value_heads}) for grouped-query attention."
            )
        for name in ("attention_bias", "attention_output_bias", "mlp_bias", "tie_word_embeddings", "shift_logits",
                     "rope_full_precision"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.head_dim is not None and self.head_dim % 2 != 0:
            raise ValueError(f"`head_dim` must be even for rotary embeddings, got {self.head_dim}.")
        for name, ok, allowed in (("rope_theta", lambda v: v > 0, "> 0"), ("rms_norm_eps", lambda v: v > 0, "> 0"),
                                  ("attention_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
                                  ("initializer_range", lambda v: v >= 0, ">= 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"`{name}` must be a finite number {allowed}, got {value!r}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"Unknown `hidden_act` {self.hidden_act!r}; allowed: {sorted(ACT2FN)}.")
        for name in ("mask_token_id", "bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            for token in (value if isinstance(value, (list, tuple)) else [value]):
                if token is not None and (not isinstance(token, int) or isinstance(token, bool)
                                          or not 0 <= token < self.vocab_size):
                    raise ValueError(f"`{name}` ({value!r}) must lie in [0, vocab_size={self.vocab_size}).")

    def _warn_misspelt(self, extra: dict) -> None:
        """A key that is no field but reads like one (`rms_norm_epsilon`) is kept, as transformers keeps extra keys,
        with a warning naming the closest field: it changes nothing."""
        fields = [p for p in inspect.signature(IlladaConfig.__init__).parameters if p not in ("self", "kwargs")]
        for key in extra:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.8)
            if close and close[0] != key:
                logger.warning(f"`{key}` is not a field of {type(self).__name__}: did you mean `{close[0]}`? It is kept "
                               "as an extra attribute and changes nothing.")


class LladaConfig(IlladaConfig):
    """`IlladaConfig` under LLaDA's model type: reads LLaDA-8B / LLaDA-1.5 `config.json` (OLMo-style names).

    The LLaDA checkpoints are multi-head (32 KV heads), untied and have their own mask id; those values come from
    the checkpoint's own config, never from code.
    """

    model_type = "llada"

    def __init__(self, **kwargs):
        kwargs = _translate_llada_kwargs(kwargs)
        kwargs.setdefault("num_key_value_heads", kwargs.get("num_attention_heads", 32))
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("rms_norm_eps", 1e-5)
        kwargs.setdefault("rope_full_precision", True)
        for name in ("mask_token_id", "bos_token_id", "pad_token_id", "eos_token_id"):
            kwargs.setdefault(name, None)
        super().__init__(**kwargs)


# Dream's config.json keys that do not change its forward pass: Dream's own attention ignores the sliding window
# (its SDPA path always attends to the whole canvas), and `use_cache` is a generation setting.
DREAM_IGNORED = ("use_sliding_window", "sliding_window", "max_window_layers", "use_cache")


class DreamConfig(IlladaConfig):
    """`IlladaConfig` under Dream's model type ("Dream"): reads Dream-v0-Base-7B / Dream-v0-Instruct-7B `config.json`.

    Dream is Qwen2.5-7B adapted to masked diffusion: Qwen2 blocks (biases on q/k/v, none on o), an untied head,
    logits shifted by one (`shift_logits=True`) and Dream's mask id 151666. Its defaults are Dream's `DreamConfig`'s
    as published (RoPE base 10000 among them, so a config.json that omits a field reads as Dream's code reads it); the
    released checkpoints state every size in their config.json (RoPE base 1e6, see the presets).
    """

    model_type = "Dream"

    def __init__(self, **kwargs):
        for key in DREAM_IGNORED:
            kwargs.pop(key, None)
        defaults = dict(
            vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6,
            rope_theta=10000.0, tie_word_embeddings=False, attention_bias=True, attention_output_bias=False,
            shift_logits=True, rope_full_precision=False, mask_token_id=151666, pad_token_id=151643,
            bos_token_id=151643, eos_token_id=151643,
        )
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        super().__init__(**kwargs)


__all__ = ["IlladaConfig", "LladaConfig", "DreamConfig"]
