"""iLLaDA / LLaDA transformer: Llama blocks trained as a masked diffusion language model.

Differs from transformers' `modeling_llama.py`:

* attention is bidirectional: every attention module sets `is_causal = False` and no causal mask is ever built;
  a 2-D padding mask only hides padded keys, a 4-D mask is used as given (block-causal, packed, ...);
* the head predicts x_0 at every position (mask tokens included), at the same position (LLaDA, iLLaDA) or one
  position later for a checkpoint adapted from an autoregressive model (`shift_logits`: Dream, `illada adapt`);
  `labels` (in canvas columns) give the masked-diffusion loss (see `diffusion.py`), not an autoregressive one;
* a key/value cache is optional and positional: callers pass `position_ids` for the rows they feed, so a
  sampler can cache a prefix (or prefix and suffix) and recompute only the block it is denoising;
* LLaDA-8B / LLaDA-1.5 checkpoints (OLMo-style keys under `model.transformer.*`) load into the same classes
  through a registered key mapping; RoPE may run in float32 as LLaDA does (`rope_full_precision`);
* loading is stricter: a checkpoint that lacks backbone weights or has backbone weights the model does not is an
  error (see `IlladaPreTrainedModel.from_pretrained`; the key map and the checks are in `checkpoints.py`).

Like Llama it goes through transformers' machinery: the attention kernel comes from `AttentionInterface`
(eager, SDPA, flash-attention, flex-attention), masks from `masking_utils.create_bidirectional_mask` (through
`attention_masks.prepare_attention_mask`), layers are
`GradientCheckpointingLayer`s, and `output_attentions` / `output_hidden_states` are recorded by `capture_outputs`.
No branch of the forward reads tensor values (the position check is skipped while tracing), so
`torch.compile(fullgraph=True)` and `torch.export` trace it.

Every projection is an `IlladaLinear`: `nn.Linear` (same parameters, same keys, what peft and quantizers wrap) that
times two CPU kernels for the few columns a cached sampler step feeds and keeps the faster (see its docstring).

Read bottom-up: linear, RMSNorm, rotary embedding, attention, MLP, decoder layer, pretrained base, model, head.
"""


import torch
from torch import nn

from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .adapters import adapter_folder, load_adapter_folder
from .checkpoints import auto_map, check_loaded, check_model_folder, head_class_name
from .configuration_illada import DreamConfig, IlladaConfig, LladaConfig
from .diffusion import align_predictions, logit_shift, masked_diffusion_loss
from .generation_dream import DreamSamplerMixin
from .generation_config import IlladaGenerationConfig
from .generation_illada import IlladaGenerationMixin
from .likelihood import IlladaLikelihoodMixin
from .model_inputs import (check_input_ids, check_outputs_requested, prepare_attention_mask, prepare_position_ids,
                           resolve_cache)
from .outputs import CACHE_FIELD, IlladaMaskedDiffusionOutput


class IlladaLinear(nn.Linear):
    """`nn.Linear` that, on CPU, times two kernels for the few rows a cached diffusion step feeds and keeps the faster.

    A cached step feeds 2-5 columns where an autoregressive step feeds one, and which BLAS kernel is fastest for so
    few rows depends on the CPU. Measured in float32 on 2 cores with weights too large for the caches (the demo's LM
    head, 49152 x 576, one row): on an AVX2 EPYC `x @ weight.T` for 2-32 rows took about twice what one row takes
    (three times for the LM head) while `weight @ x.T` cost what one row does; on an AVX-512 EPYC one row took the
    matrix-vector kernel, 2-3x slower than `weight @ x.T` for that row fed twice (12.6 ms against 5.6); on an
    AVX-512 Xeon `x @ weight.T` was the fastest for 1-3 rows and `weight @ x.T` 3-4x slower (3 ms against 11). So
    without autograd, in float32 on CPU, the first call with a given weight shape and row count (at most
    `few_rows`) times both (best of three each, about ten products) and the choice is kept for the process
    (`kernels`); `autotune = False` always takes `weight @ x.T` (one row fed twice); `few_rows = 0` turns the path
    off. Training, GPU, other dtypes and a full canvas are `F.linear`.
    The result equals `F.linear`'s up to float rounding (summation order). That kernel's rounding also depends on the
    weight's address modulo 16 bytes, and safetensors hands out 8-byte aligned weights, so `from_pretrained` copies
    unaligned float32 CPU weights of these layers once (`align_weights`): a model gives the same bits however it was
    loaded.
    """

    few_rows = 32
    autotune = True
    kernels: dict = {}  # (out_features, in_features, rows) -> True: `weight @ x.T` is the faster here

    @staticmethod
    def transposed(weight: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """`flat @ weight.T` computed as `(weight @ flat.T).T`; one row goes in twice (the matrix-matrix kernel)."""
        rows = flat.shape[0]
        if rows == 1:
            flat = torch.cat([flat, flat])  # (2, in_features)
        return torch.mm(weight, flat.contiguous().T).T[:rows].contiguous()  # (rows, out_features)

    @classmethod
    def transposed_is_faster(cls, weight: torch.Tensor, flat: torch.Tensor) -> bool:
        import time

        def best(product) -> float:
            product()  # warm-up
            times = []
            for _ in range(3):
                start = time.perf_counter()
                product()
                times.append(time.perf_counter() - start)
            return min(times)

        return best(lambda: cls.transposed(weight, flat)) < best(lambda: nn.functional.linear(flat, weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cheapest tests first: this runs once per projection per step, where Python time is a visible share
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return nn.functional.linear(x, self.weight, self.bias)
        rows = x.numel() // max(x.shape[-1], 1)
        if rows > self.few_rows:
            return nn.functional.linear(x, self.weight, self.bias)
        key = (self.out_features, self.in_features, rows)
        choice = self.kernels.get(key) if self.autotune else True
        if choice is None and not torch.compiler.is_compiling():  # first call with this shape: time both kernels
            choice = self.kernels[key] = self.transposed_is_faster(self.weight, x.reshape(rows, -1))
        if choice is False:
            return nn.functional.linear(x, self.weight, self.bias)
        out = self.transposed(self.weight, x.reshape(rows, -1))  # (rows, out_features); untimed in a trace
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


def align_weights(model: nn.Module) -> None:
    """Copy each float32 CPU weight of an `IlladaLinear` not 64-byte aligned (a safetensors view) to fresh memory."""
    for weight in (module.weight for module in model.modules() if isinstance(module, IlladaLinear)):
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.data_ptr() % 64:
            weight.data = weight.data.clone()  # a tied weight is one Parameter: its other user follows


class IlladaRMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back before the weight, as both LLaDA and Llama do."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def rope_inverse_frequencies(config: IlladaConfig) -> torch.Tensor:
    """`1 / theta^(2i / head_dim)` for i in [0, head_dim / 2): plain (unscaled) RoPE."""
    dim = config.head_dim
    return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


class IlladaRotaryEmbedding(nn.Module):
    """Returns (cos, sin) for the given positions, in float32; `apply_rotary_pos_emb` picks the working dtype."""

    inv_freq: torch.Tensor

    def __init__(self, config: IlladaConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)  # (B, D/2, 1)
        positions = position_ids[:, None, :].float()  # (B, 1, L)
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            freqs = (inv_freq @ positions).transpose(1, 2)  # (B, L, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (B, L, D)
            return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotates half the hidden dims of the input (NeoX / Llama split-halves convention, LLaDA's too)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, full_precision: bool = False):
    """Rotate q and k `(B, H, L, D)`. With `full_precision` the rotation runs in float32 (LLaDA's
    `rope_full_precision`); otherwise cos/sin are cast to the activations' dtype (Llama)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, D)
    if full_precision:
        qf, kf = q.float(), k.float()
        return (qf * cos + rotate_half(qf) * sin).to(q.dtype), (kf * cos + rotate_half(kf) * sin).to(k.dtype)
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, L, D) -> (B, H_kv * n_rep, L, D) for grouped-query attention."""
    if n_rep == 1:
        return hidden_states
    b, h_kv, length, d = hidden_states.shape
    return hidden_states[:, :, None].expand(b, h_kv, n_rep, length, d).reshape(b, h_kv * n_rep, length, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: softmax(q k^T * scaling + mask) v, never causal. Mask: bool (True = attend) or additive."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Q, K)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask.to(scores.dtype)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, Q, H, D)
    return output, weights


class IlladaAttention(nn.Module):
    """Multi-head attention with grouped KV heads, RoPE and no causal mask.

    With a `cache` (any object with transformers' `Cache.update(k, v, layer_idx)` contract) the new keys/values are
    handed to the cache, which returns the full key/value tensors to attend to: a prefix cache concatenates, a dual
    cache writes them in place. Positions always come from `position_ids`. The kernel is the one
    `config._attn_implementation` names in `AttentionInterface`, `eager_attention_forward` by default.
    """

    def __init__(self, config: IlladaConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False  # the one switch that makes this a diffusion LM; SDPA and flash-attention read it
        bias = config.attention_bias
        self.q_proj = IlladaLinear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = IlladaLinear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = IlladaLinear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = IlladaLinear(config.num_attention_heads * self.head_dim, config.hidden_size,
                                   bias=getattr(config, "attention_output_bias", bias))

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (B, H, L, D)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)  # (B, H_kv, L, D)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)  # (B, H_kv, L, D)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin, getattr(self.config, "rope_full_precision", False))

        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (B, H_kv, K, D)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        output = output.reshape(batch, length, -1).contiguous()  # (B, L, H * D)
        return self.o_proj(output), weights


class IlladaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)). LLaDA names gate `ff_proj`, down `ff_out`."""

    def __init__(self, config: IlladaConfig):
        super().__init__()
        self.gate_proj = IlladaLinear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = IlladaLinear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = IlladaLinear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class IlladaDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: IlladaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = IlladaAttention(config, layer_idx)
        self.mlp = IlladaMLP(config)
        self.input_layernorm = IlladaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = IlladaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        # Self Attention
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask=attention_mask, cache=cache, **kwargs
        )
        hidden_states = residual + hidden_states
        # Fully Connected
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class IlladaPreTrainedModel(PreTrainedModel):
    config_class = IlladaConfig
    config: IlladaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["IlladaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = True  # non-causal (module.is_causal is False); a 2-D padding mask, no 4-D masks
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": IlladaDecoderLayer, "attentions": IlladaAttention}
    # forward takes **kwargs but its loss is already a per-batch mean: the Trainer must still divide it by the
    # gradient-accumulation steps, which it skips for models that "accept loss kwargs"
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, IlladaRotaryEmbedding):
            # non-persistent buffers are not in checkpoints: recompute, or from_pretrained leaves garbage
            module.inv_freq.copy_(rope_inverse_frequencies(module.config).to(module.inv_freq.device))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *args, strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained` with one stricter rule: a checkpoint that lacks backbone weights or holds
        backbone weights the model does not have is an error naming the keys (transformers only warns; weights of the
        wrong shape are already transformers' own error unless `ignore_mismatched_sizes=True`). What transformers'
        loading contract allows still loads and is reported (`output_loading_info=True`, transformers' load report):

        * the LM head missing (a backbone checkpoint, saved from `IlladaModel`, loaded into the head class): the head
          is initialised, listed in `missing_keys` and warned about;
        * a head checkpoint loaded into `IlladaModel`: `lm_head.weight` is dropped and listed in `unexpected_keys`;
        * no checkpoint (`from_pretrained(None, config=..., state_dict=...)`): what the state dict lacks is
          initialised, as transformers does.

        `strict=False` turns the error back into transformers' warning.

        A folder written by `illada adapt --save-adapter` (a LoRA adapter and `adapter_base` in its config) is
        followed to its base: the base's weights load, the adapter is merged in (see `adapters.py`)."""
        folder = adapter_folder(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if folder is not None:
            if args:
                raise ValueError("An adapter folder takes keyword options only (`dtype=`, `device_map=`, ...).")
            loaded = load_adapter_folder(cls, folder, **kwargs)
            align_weights(loaded[0] if isinstance(loaded, tuple) else loaded)
            return loaded
        check_model_folder(pretrained_model_name_or_path)
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        check_loaded(cls.__name__, model, info, strict=strict and pretrained_model_name_or_path is not None)
        align_weights(model)
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, always in this package's key layout (also for models loaded from
        LLaDA's layout), with a complete `auto_map` pointing at the code files saved alongside, so that the folder
        loads with `trust_remote_code=True` where this package is not installed. An `auto_map` inherited from an
        official checkpoint (pointing at its own code) is replaced."""
        self.config.auto_map = auto_map(self.config)
        self.config.architectures = [head_class_name(self.config)]
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)


class IlladaModel(IlladaPreTrainedModel):
    """The bare bidirectional transformer: token embeddings in, final hidden states out."""

    def __init__(self, config: IlladaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([IlladaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = IlladaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = IlladaRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ):
        """
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, length)`): token ids, mask tokens included.
            attention_mask (`torch.Tensor`, *optional*): 2-D `(batch, key length)` with 1 for real tokens and 0
                for padding, or 4-D `(batch, 1, length, key length)`, bool (True = attend) or additive float.
            position_ids (`torch.LongTensor` of shape `(batch, length)`, *optional*): defaults to 0..L-1, counted
                over real tokens only when a 2-D mask marks left padding (so a padded row sees the positions it
                would see alone).
            past_key_values (*optional*): a cache with `update(key, value, layer_idx)`; see `caching.py`. Also
                accepted as `cache` (transformers >= 5.24's name).
            inputs_embeds (`torch.FloatTensor` of shape `(batch, length, hidden)`, *optional*).
            output_hidden_states / output_attentions (`bool`, *optional*): recorded by transformers'
                `capture_outputs`; attention weights exist only with eager attention.
        """
        cache = resolve_cache(past_key_values, kwargs.pop("cache", None))
        check_outputs_requested(self.config, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            check_input_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)  # (B, L, d)
        batch, q_len = inputs_embeds.shape[:2]
        past_len = cache.get_seq_length() if cache is not None else 0
        kv_len = past_len + q_len  # an appending cache; one that writes in place says so through get_mask_sizes
        if hasattr(cache, "get_mask_sizes"):
            kv_len = cache.get_mask_sizes(q_len, 0)[0]
        mask = prepare_attention_mask(self.config, attention_mask, inputs_embeds, kv_len)
        position_ids = prepare_position_ids(self.config, position_ids, attention_mask, cache, past_len, inputs_embeds,
                                            kv_len)  # (B, L)

        position_embeddings = self.rotary_emb(position_ids.to(inputs_embeds.device))  # (B, L, D) x2
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, attention_mask=mask, position_embeddings=position_embeddings, cache=cache, **kwargs
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_FIELD: cache})


class IlladaForMaskedDiffusion(IlladaPreTrainedModel, IlladaGenerationMixin, IlladaLikelihoodMixin, DreamSamplerMixin):
    """`IlladaModel` plus the LM head predicting x_0 at every position (or, with `shift_logits`, at the next one),
    diffusion `generate()` (LLaDA's sampler and this package's accelerations) and `diffusion_generate()` (Dream's).

    This is also what `AutoModel` and `AutoModelForMaskedLM` return for illada/llada/Dream configs: the official
    LLaDA/iLLaDA/Dream snippets call `AutoModel.from_pretrained(...)` and read `.logits`.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    generation_config_class = IlladaGenerationConfig  # PreTrainedModel's own attribute would win in the MRO

    def __init__(self, config: IlladaConfig):
        super().__init__(config)
        self.model = IlladaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = IlladaLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        loss_weights: torch.FloatTensor | None = None,
        logits_to_keep: int | slice | torch.Tensor = 0,
        **kwargs,
    ):
        """
        Args (beyond `IlladaModel.forward`):
            labels (`torch.LongTensor` of shape `(batch, length)`, *optional*): x_0 at the masked positions and
                -100 elsewhere, in canvas columns; gives the masked-diffusion loss. With `config.shift_logits` column
                j is scored by output j - 1 (column 0, which no output predicts, must be -100).
            loss_weights (`torch.FloatTensor` of shape `(batch, length)`, *optional*): per-token weights carrying
                1/p_mask and the normalisation (see `diffusion.masked_diffusion_loss`).
            logits_to_keep (`int`, `slice` or 1-D `torch.LongTensor`): compute logits only for the last `n`
                positions (`0` = all), a slice, or the given position indices (shared by the batch).
            return_dict (`bool`, *optional*): `False` returns the output's non-None fields as a tuple.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (B, L, d)
        if isinstance(logits_to_keep, int):
            keep = slice(-logits_to_keep, None) if logits_to_keep > 0 else slice(None)
        else:
            keep = logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])  # (B, kept, V)

        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError("`labels` need logits at every position: do not combine them with `logits_to_keep`.")
            shift = logit_shift(self.config)
            if shift and not torch.compiler.is_compiling() and bool((labels[:, 0] != -100).any()):
                raise ValueError(
                    "`labels` has a target in column 0, but this model's logits are shifted (`shift_logits=True`: "
                    "output j predicts column j + 1), so no output predicts column 0: set labels[:, 0] = -100 and never "
                    "mask position 0 (the training collators do this when given `shift_logits=True`)."
                )
            loss = masked_diffusion_loss(align_predictions(logits, shift), labels, loss_weights)

        return IlladaMaskedDiffusionOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )


class LladaForMaskedDiffusion(IlladaForMaskedDiffusion):
    """`IlladaForMaskedDiffusion` under `LladaConfig` (model_type "llada"): what the Auto classes build for
    LLaDA-8B / LLaDA-1.5 folders. Their OLMo-style weight names are mapped on load (`checkpoints.LLADA_KEY_MAPPING`)."""

    config_class = LladaConfig
    config: LladaConfig


class DreamForMaskedDiffusion(IlladaForMaskedDiffusion):
    """`IlladaForMaskedDiffusion` under `DreamConfig` (model_type "Dream"): what the Auto classes build for Dream-7B
    folders. Dream's keys are Qwen2's, which are already ours (`model.layers.N.self_attn.q_proj`, ..., `lm_head`), so
    nothing is renamed; its untied head and q/k/v biases come from the config, its shifted logits too."""

    config_class = DreamConfig
    config: DreamConfig


__all__ = [
    "IlladaPreTrainedModel",
    "LladaForMaskedDiffusion",
    "DreamForMaskedDiffusion",
    "IlladaModel",
    "IlladaForMaskedDiffusion",
    "IlladaMaskedDiffusionOutput",
]
