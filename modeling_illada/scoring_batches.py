"""How (prompt, answer) pairs are checked and laid out for scoring (a Hub file; `likelihood.py` scores them).

Differs from LLaDA's reference scorer, which takes one pair at a time: many pairs are scored in padded batches.
Prompts are left-padded and answers right-padded so that every answer starts at the same column; positions are
counted over real tokens, so each row gets the logits it would get alone; pairs that each fit the context but not
together (a long prompt beside a long answer) go to separate batches. Every check names the argument and the pair.
"""

import torch
import torch.nn.functional as F

from .diffusion import logit_shift, prediction_rows
from .generation_config import special_token_id
from .guidance import guidance_for


def as_sequences(value, name: str) -> list[list[int]]:
    """One sequence (1-D tensor or list of ints), a 2-D tensor (one row each), or a list of sequences."""
    def ids(sequence, where):
        if isinstance(sequence, torch.Tensor):
            if sequence.is_floating_point() or sequence.is_complex() or sequence.dtype == torch.bool:
                raise ValueError(f"`{where}` must hold integer token ids, got a {sequence.dtype} tensor.")
            if sequence.dim() != 1:
                raise ValueError(f"`{where}` must be 1-D (one sequence), got shape {tuple(sequence.shape)}.")
            return sequence.tolist()
        if not isinstance(sequence, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in sequence):
            raise ValueError(f"`{where}` must be a sequence of integer token ids, got {type(sequence).__name__} "
                             f"{str(sequence)[:60]}.")
        return list(sequence)

    if isinstance(value, torch.Tensor):
        if value.dim() == 2:
            return [ids(row, f"{name}[{i}]") for i, row in enumerate(value)]
        if value.dim() != 1:
            raise ValueError(f"`{name}` must be 1-D (one sequence) or 2-D (batch, length), got shape {tuple(value.shape)}.")
        return [ids(value, name)]
    if isinstance(value, (list, tuple)):
        if len(value) == 0 or all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [ids(value, name)]
        return [ids(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise ValueError(
        f"`{name}` must be token ids: a list of ints, a tensor, or a list of those; got {type(value).__name__}."
    )


def required_id(model, name: str, explicit, why: str) -> int:
    value = special_token_id(model, name, explicit)
    if value is None:
        raise ValueError(f"{why} needs `{name}`: pass `{name}=` or set it in the model's config or generation config.")
    return value


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def validated_pairs(model, prompts, answers, *, mask_id, add_bos_token, padd_eos, bos_token_id, eos_token_id, max_length):
    """Validated `(prompts, answers, eos, limit)`: BOS added where asked, every pair checked against the vocabulary,
    the mask id and the context (each pair must fit on its own; `score_layouts` then batches those that fit together)."""
    prompts, answers = as_sequences(prompts, "prompts"), as_sequences(answers, "answers")
    if len(prompts) == 1 and len(answers) > 1:
        prompts = prompts * len(answers)  # one prompt, several answers (multiple choice)
    if len(prompts) != len(answers):
        raise ValueError(f"`prompts` and `answers` must pair up: got {len(prompts)} prompts and {len(answers)} answers.")
    if not answers:
        raise ValueError("`answers` is empty: pass at least one (prompt, answer) pair.")
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    limit = max_length if max_length is not None else getattr(config, "max_position_embeddings", None)
    bos = required_id(model, "bos_token_id", bos_token_id, "`add_bos_token=True`") if add_bos_token else None
    eos = required_id(model, "eos_token_id", eos_token_id, "`padd_eos=True`") if padd_eos else None
    shift = logit_shift(config)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if not answer:
            raise ValueError(f"`answers[{i}]` is empty: there is nothing to score (an answer needs a token).")
        if bos is not None and prompt[:1] != [bos]:
            prompts[i] = prompt = [bos] + prompt
        if shift and not prompt:
            raise ValueError(
                f"`prompts[{i}]` is empty, but this model's logits are shifted (`shift_logits=True`: each token is "
                "predicted from the one before it), so an answer's first token needs a token before it: pass a "
                "prompt, or `add_bos_token=True`."
            )
        total = len(prompt) + len(answer) + (eos is not None)
        if limit is not None and total > limit:
            raise ValueError(
                f"`prompts[{i}]` ({len(prompt)} tokens{' with BOS' if bos is not None else ''}) plus `answers[{i}]` "
                f"({len(answer)}){' plus EOS' if eos is not None else ''} = {total} tokens exceeds the context "
                f"(`max_length` = {limit}); shorten the prompt."
            )
        if vocab is not None and any(not 0 <= t < vocab for t in prompt + answer):
            raise ValueError(f"`prompts[{i}]` / `answers[{i}]` hold ids outside the vocabulary [0, {vocab}).")
        for name, sequence in (("answers", answer), ("prompts", prompt)):
            if mask_id in sequence:
                raise ValueError(
                    f"`{name}[{i}]` holds the mask token (id {mask_id}) at position {sequence.index(mask_id)}: it would "
                    "be scored as a masked position. Score text without mask tokens (decode and re-encode, or drop it)."
                )
    return prompts, answers, eos, limit


def score_layouts(model, prompts, answers, *, mask_id, add_bos_token=False, padd_eos=False, bos_token_id=None,
             eos_token_id=None, max_length=None) -> list[tuple[list[int], "AnswerLayout"]]:
    """`[(pair indices, layout)]`: the validated pairs in consecutive padded batches, each as long as fits the context.
    A batch aligns its answers at one column, so it is as long as its longest prompt plus its longest answer; pairs
    that each fit but not together go to the next batch. Each pair's score is independent of its batch."""
    prompts, answers, eos, limit = validated_pairs(model, prompts, answers, mask_id=mask_id, add_bos_token=add_bos_token,
                                          padd_eos=padd_eos, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                                          max_length=max_length)
    groups, current, longest = [], [], (0, 0)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        grown = (max(longest[0], len(prompt)), max(longest[1], len(answer)))
        if current and limit is not None and sum(grown) + (eos is not None) > limit:
            groups.append(current)
            current, grown = [], (len(prompt), len(answer))
        current.append(i)
        longest = grown
    groups.append(current)
    return [(group, AnswerLayout(model, [prompts[i] for i in group], [answers[i] for i in group], eos)) for group in groups]


class AnswerLayout:
    """Validated pairs laid out as `[left pad | BOS | prompt | answer | EOS | right pad]`, every answer starting at
    `start` (see `score_layouts`, which validates and batches them).

    Attributes:
        tokens: `(N, T)` clean ids; attention_mask: `(N, T)` 1 on real tokens; prompt_index: `(N, T)` the positions
        classifier-free guidance hides (BOS and prompt); answer: `(N, W)` answer ids, right-padded;
        answer_mask: `(N, W)` bool, real answer positions; lengths: `(N,)` answer lengths L.
    """

    def __init__(self, model, prompts, answers, eos: int | None):
        self.shift = logit_shift(getattr(model, "config", None))
        device = model_device(model)
        n = len(answers)
        self.start = max(len(p) for p in prompts)
        self.width = max(len(a) for a in answers)
        length = self.start + self.width + (eos is not None)
        pad = special_token_id(model, "pad_token_id") or 0
        tokens = torch.full((n, length), pad, dtype=torch.long)  # (N, T)
        attention_mask = torch.zeros(n, length, dtype=torch.long)  # (N, T)
        prompt_index = torch.zeros(n, length, dtype=torch.bool)  # (N, T)
        for row, (prompt, answer) in enumerate(zip(prompts, answers)):
            first, end = self.start - len(prompt), self.start + len(answer)
            tokens[row, first:self.start] = torch.tensor(prompt, dtype=torch.long)
            tokens[row, self.start:end] = torch.tensor(answer, dtype=torch.long)
            prompt_index[row, first:self.start] = True
            attention_mask[row, first:end] = 1
            if eos is not None:
                tokens[row, end] = eos
                attention_mask[row, end] = 1
        self.tokens, self.attention_mask = tokens.to(device), attention_mask.to(device)
        self.prompt_index = prompt_index.to(device)
        self.lengths = torch.tensor([len(a) for a in answers], device=device)  # (N,)
        self.answer_mask = torch.arange(self.width, device=device)[None] < self.lengths[:, None]  # (N, W)
        self.answer = self.tokens[:, self.start:self.start + self.width] * self.answer_mask  # (N, W)

    def answer_log_probs(self, model, x: torch.Tensor, rows: torch.Tensor, cfg_scale: float, mask_id: int) -> torch.Tensor:
        """`(n, W)` float32 log-probability of the true answer token at every answer column of canvases `x` `(n, T)`."""
        guidance = guidance_for(cfg_scale, mask_id, self.prompt_index[rows])
        guided_x, guided_mask = guidance.batch(x, self.attention_mask[rows])
        answer_rows = prediction_rows(self.start, self.start + self.width, self.shift)  # outputs predicting them
        out = model(input_ids=guided_x, attention_mask=guided_mask, logits_to_keep=answer_rows)
        logits = guidance.combine(out.logits if hasattr(out, "logits") else out[0]).float()  # (n, W, V)
        return -F.cross_entropy(logits.transpose(1, 2), self.answer[rows], reduction="none")  # (n, W)


__all__ = ["AnswerLayout", "as_sequences", "model_device", "required_id", "score_layouts", "validated_pairs"]
