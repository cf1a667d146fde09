"""Log-likelihood of an answer given a prompt under a masked diffusion LM: LLaDA's Monte Carlo bound, iLLaDA's
confidence scorer and the exact left-to-right score.

A masked diffusion LM has no chain rule to read log p(answer | prompt) from. Two estimators are used upstream,
and this package adds a third:

* `monte_carlo` (LLaDA's `get_log_likelihood`): a Monte Carlo estimate of the ELBO, a lower bound on
  log p(answer | prompt). Each sample masks exactly `l` of the `L` answer tokens (the prompt is never masked), sums
  the cross-entropy of the true tokens at the masked positions and weights it by `L / l`. Within each mini-batch of
  `mc_batch_size` samples the counts are stratified: one random start `k` in 1..L, then counts evenly spaced by
  `L / mc_batch_size` and wrapped into 1..L. The estimate is minus the mean over `mc_num` samples. A one-token
  answer has a single possible mask, so it is scored exactly in one forward whatever `mc_num` is.
* `confidence` (iLLaDA's `llh='confidence'`): deterministic. Start with every answer position masked; at each step
  take the cross-entropy of the true token at every still-masked position, add the smallest to the total and reveal
  the true token there. The score is minus the total: one forward per answer token, no `L / l` weight. The order
  is chosen with the true tokens, so this is a score for ranking answers, not a log-probability.
* `left_to_right` (this package's): the same loop revealing the answer in reading order, whatever the model
  predicts. That is the exact log-probability of the answer under the sampler that decodes one token per step left
  to right with the rest masked (`block_length=1`, temperature 1, no cache, no logits shaping): not a bound but a
  normalised distribution, whose probabilities sum to 1 over every answer of a length (the mask token counting as
  a token the head may predict). For a model adapted from an autoregressive one it is the order it knows best.

`text_log_likelihood` applies the Monte Carlo bound (`elbo`) or the left-to-right score to whole texts (lm-eval's
`loglikelihood_rolling`); texts longer than the context are scored in windows, each conditioned on the tokens before
it.

Differences from the reference code (`get_log_likelihood.py`, iLLaDA's `eval_illada.py`):

* many (prompt, answer) pairs are scored in padded batches, each row getting the logits it would get alone (see
  `scoring_batches.py`), and logits are computed for the answer columns only;
* each pair draws its randomness from its own generator, all of it before the first forward, so a pair's estimate
  does not depend on which pairs share its batch;
* cross-entropy is taken in float32 whatever the model dtype; mask / BOS / EOS ids come from the arguments, the
  generation config or the model config, never from literals; `add_bos_token` does not add a second BOS.

Notation (code -> LLaDA paper): `answer` -> r_0, `prompt` -> p_0, `counts` -> l, `L / counts` -> the 1 / p_mask
weight, `mc_num` -> the number of Monte Carlo samples.
"""

import torch

from .diffusion import logit_shift
from .scoring_batches import AnswerLayout, as_sequences, model_device, required_id, score_layouts


DEFAULT_MC_NUM = 128
DEFAULT_MC_BATCH_SIZE = 32  # LLaDA's / iLLaDA's lm-eval harness default mini-batch


# --- inputs (the pairs' layout is in scoring_batches.py) ---------------------------------------------------------

def _generators(generator, seed, n: int) -> list:
    """One generator (or None = torch's global RNG) per pair; a shared generator is drawn from in pair order."""
    if generator is not None and seed is not None:
        raise ValueError("Pass either `generator` or `seed`, not both.")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"`seed` must be an integer, got {seed!r}.")
        generator = torch.Generator().manual_seed(seed)
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"`generator` as a list needs one generator per pair ({n}), got {len(generator)}.")
        return list(generator)
    return [generator] * n


def check_monte_carlo(mc_num, mc_batch_size) -> int:
    """The mini-batch size, after checking `mc_num` is a positive multiple of it."""
    if not isinstance(mc_num, int) or isinstance(mc_num, bool) or mc_num < 1:
        raise ValueError(f"`mc_num` must be a positive integer (LLaDA uses 128; 1 for one-token answers), got {mc_num!r}.")
    if mc_batch_size is None:
        mc_batch_size = min(DEFAULT_MC_BATCH_SIZE, mc_num)
    if not isinstance(mc_batch_size, int) or isinstance(mc_batch_size, bool) or mc_batch_size < 1:
        raise ValueError(f"`mc_batch_size` must be a positive integer, got {mc_batch_size!r}.")
    if mc_num % mc_batch_size:
        raise ValueError(
            f"`mc_num` ({mc_num}) must be a multiple of `mc_batch_size` ({mc_batch_size}), the mini-batch over which the "
            f"masked counts are stratified: use mc_num={mc_batch_size * max(1, round(mc_num / mc_batch_size))} or a "
            f"mc_batch_size that divides {mc_num}."
        )
    return mc_batch_size


def _check_cfg(cfg_scale):
    if not isinstance(cfg_scale, (int, float)) or isinstance(cfg_scale, bool) or not 0 <= cfg_scale < float("inf"):
        raise ValueError(f"`cfg_scale` must be a finite number >= 0 (0 = no guidance), got {cfg_scale!r}.")


def stratified_masks(length: int, rounds: int, mc_batch_size: int, generator=None) -> torch.Tensor:
    """`(rounds, mc_batch_size, length)` bool masks over one answer: LLaDA's lower-variance forward process.

    Each round draws `k` uniformly from 1..L; its rows mask `round(k + j * L / mc_batch_size)` tokens (wrapped into
    1..L) for j = 0..mc_batch_size-1, the positions chosen by a uniform random permutation.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    k = torch.randint(1, length + 1, (rounds, 1), generator=generator, device=device)  # (R, 1)
    offsets = torch.arange(mc_batch_size, device=device, dtype=torch.float64) * (length / mc_batch_size)  # (b,)
    counts = (torch.round(k + offsets).long() - 1) % length + 1  # (R, b), each in 1..L
    scores = torch.rand(rounds, mc_batch_size, length, generator=generator, device=device)  # (R, b, L)
    ranks = scores.argsort(-1).argsort(-1)  # (R, b, L): a random permutation per sample
    return ranks < counts[..., None]


# --- scorers ------------------------------------------------------------------------------------------------------

ONE_AT_A_TIME_ARGS = """

    Args:
        model: a masked diffusion LM returning `.logits` (any model of this package).
        prompts, answers: token ids, one sequence or a list of them (a single prompt is shared by every answer).
        cfg_scale: classifier-free guidance scale (prompt masked in the unconditional pass), 0 = none.
        add_bos_token: prepend BOS to each prompt (unless it already starts with it), as iLLaDA's harness does.
        padd_eos: append one EOS after each sequence before every forward (it is never scored).
        mask_token_id, bos_token_id, eos_token_id: override the ids from the generation config / model config.
        max_length: the context limit; defaults to `config.max_position_embeddings`.
    """


def _one_at_a_time_scorer(order: str, name: str, summary: str):
    """The public scorer that reveals one answer token per forward, choosing the column by `order`
    (`_reveal_one_at_a_time`); every order takes the same arguments."""

    def scorer(
        model,
        prompts,
        answers,
        *,
        cfg_scale: float = 0.0,
        add_bos_token: bool = False,
        padd_eos: bool = False,
        mask_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        max_length: int | None = None,
    ) -> torch.Tensor:
        _check_cfg(cfg_scale)
        mask_id = required_id(model, "mask_token_id", mask_token_id, "Scoring")
        batches = score_layouts(model, prompts, answers, mask_id=mask_id, add_bos_token=add_bos_token,
                                padd_eos=padd_eos, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                                max_length=max_length)
        result = torch.zeros(sum(len(group) for group, _ in batches), dtype=torch.float64, device=model_device(model))
        for group, layout in batches:
            rows = torch.arange(len(group), device=layout.tokens.device)
            result[torch.tensor(group, device=result.device)] = _reveal_one_at_a_time(model, layout, rows, cfg_scale,
                                                                                      mask_id, order)
        return result

    scorer.__name__ = scorer.__qualname__ = name
    scorer.__doc__ = summary + ONE_AT_A_TIME_ARGS
    return scorer


confidence_log_likelihood = _one_at_a_time_scorer(
    "confidence", "confidence_log_likelihood",
    "iLLaDA's deterministic confidence score of each answer given its prompt, as a `(N,)` float64 tensor.")
left_to_right_log_likelihood = _one_at_a_time_scorer(
    "left_to_right", "left_to_right_log_likelihood",
    "Exact log p(answer | prompt) of each pair under left-to-right decoding, one token per step with the rest of\n"
    "    the answer masked, as a `(N,)` float64 tensor: sum over k of log p(answer[k] | prompt, answer[:k], masks\n"
    "    after). One forward per answer token.")


@torch.no_grad()
def _reveal_one_at_a_time(model, layout: AnswerLayout, rows: torch.Tensor, cfg_scale: float, mask_id: int,
                          order: str) -> torch.Tensor:
    """Minus the summed cross-entropy of the true tokens, each taken at the step that reveals it: the most
    confident masked column (`confidence`) or the first masked one (`left_to_right`) per forward."""
    answer_cols = slice(layout.start, layout.start + layout.width)
    x = layout.tokens[rows].clone()  # (n, T)
    still_masked = layout.answer_mask[rows].clone()  # (n, W)
    x[:, answer_cols] = x[:, answer_cols].masked_fill(still_masked, mask_id)
    total = torch.zeros(len(rows), dtype=torch.float64, device=x.device)  # (n,)
    while True:
        active = still_masked.any(-1).nonzero().squeeze(-1)  # rows with answer tokens left: one forward each
        if active.numel() == 0:
            return -total
        log_probs = layout.answer_log_probs(model, x[active], rows[active], cfg_scale, mask_id)  # (a, W)
        ce = (-log_probs).masked_fill(~still_masked[active], torch.inf)
        if order == "confidence":
            best = ce.argmin(-1)  # (a,): the most confident position, measured against the true token
        else:  # left_to_right: the first answer column still masked
            best = still_masked[active].int().argmax(-1)  # (a,)
        total[active] += ce.gather(1, best[:, None]).squeeze(1).double()
        x[active, layout.start + best] = layout.answer[rows[active], best]
        still_masked[active, best] = False


def monte_carlo_log_likelihood(
    model,
    prompts,
    answers,
    *,
    mc_num: int = DEFAULT_MC_NUM,
    mc_batch_size: int | None = None,
    cfg_scale: float = 0.0,
    generator: torch.Generator | list | None = None,
    seed: int | None = None,
    add_bos_token: bool = False,
    padd_eos: bool = False,
    mask_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """LLaDA's Monte Carlo lower bound of log p(answer | prompt) for each pair, as a `(N,)` float64 tensor.

    Args:
        model, prompts, answers, cfg_scale, add_bos_token, padd_eos, *_token_id, max_length: as in
            `confidence_log_likelihood`.
        mc_num: Monte Carlo samples per pair (LLaDA: 128; one-token answers always take one exact forward).
        mc_batch_size: samples per mini-batch, over which the masked counts are stratified; must divide `mc_num`.
            Defaults to `min(32, mc_num)`. (Upstream calls it `batch_size`.) Each forward holds
            `pairs x mc_batch_size` rows, doubled with CFG.
        generator: a `torch.Generator` (drawn from pair by pair, in order), a list of one per pair, or None for
            torch's global RNG. Randomness is drawn where the generator lives (CPU by default), so a seed gives the
            same masks on every device.
        seed: shorthand for `generator=torch.Generator().manual_seed(seed)`.
    """
    mc_batch_size = check_monte_carlo(mc_num, mc_batch_size)
    _check_cfg(cfg_scale)
    mask_id = required_id(model, "mask_token_id", mask_token_id, "Scoring")
    batches = score_layouts(model, prompts, answers, mask_id=mask_id, add_bos_token=add_bos_token, padd_eos=padd_eos,
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id, max_length=max_length)
    count = sum(len(group) for group, _ in batches)
    generators = _generators(generator, seed, count)
    result = torch.zeros(count, dtype=torch.float64, device=model_device(model))
    for group, layout in batches:  # consecutive groups: a shared generator is still drawn from pair by pair
        result[torch.tensor(group, device=result.device)] = _monte_carlo(
            model, layout, [generators[i] for i in group], mc_num, mc_batch_size, cfg_scale, mask_id)
    return result


@torch.no_grad()
def _monte_carlo(model, layout: AnswerLayout, generators: list, mc_num: int, mc_batch_size: int, cfg_scale: float,
                 mask_id: int) -> torch.Tensor:
    device = layout.tokens.device
    result = torch.zeros(len(layout.lengths), dtype=torch.float64, device=device)  # (N,)

    exact = (layout.lengths == 1).nonzero().squeeze(-1)  # one-token answers: one mask, one forward
    if exact.numel():
        result[exact] = _reveal_one_at_a_time(model, layout, exact, cfg_scale, mask_id, "left_to_right")
    sampled = (layout.lengths > 1).nonzero().squeeze(-1)
    if sampled.numel() == 0:
        return result

    rounds = mc_num // mc_batch_size
    masks = torch.zeros(rounds, len(sampled), mc_batch_size, layout.width, dtype=torch.bool)  # (R, S, b, W)
    for column, pair in enumerate(sampled.tolist()):  # every draw up front, pair by pair
        length = int(layout.lengths[pair])
        masks[:, column, :, :length] = stratified_masks(length, rounds, mc_batch_size, generators[pair]).cpu()
    masks = masks.to(device)
    rows = sampled.repeat_interleave(mc_batch_size)  # (S * b,): each pair's mini-batch of samples
    weights = layout.lengths[rows].double()  # (S * b,): L, divided by the count below
    answer_cols = slice(layout.start, layout.start + layout.width)
    total = torch.zeros(len(sampled), dtype=torch.float64, device=device)  # (S,)
    for r in range(rounds):
        is_masked = masks[r].reshape(len(rows), layout.width)  # (S * b, W)
        x = layout.tokens[rows].clone()  # (S * b, T)
        x[:, answer_cols] = x[:, answer_cols].masked_fill(is_masked, mask_id)
        log_probs = layout.answer_log_probs(model, x, rows, cfg_scale, mask_id)  # (S * b, W)
        ce = (-log_probs).masked_fill(~is_masked, 0.0).sum(-1).double()  # (S * b,)
        sample = ce * weights / is_masked.sum(-1)  # CE of the l masked tokens, times L / l
        total += sample.view(len(sampled), mc_batch_size).sum(-1)
    result[sampled] = -total / mc_num
    return result


SCORERS = {"mc": monte_carlo_log_likelihood, "confidence": confidence_log_likelihood,
           "left_to_right": left_to_right_log_likelihood}


def log_likelihood(model, prompts, answers, scorer: str = "mc", **kwargs) -> torch.Tensor:
    """log p(answer | prompt) for each pair with the named scorer (`SCORERS`): `"mc"` (LLaDA's Monte Carlo lower
    bound, the default), `"confidence"` (iLLaDA's deterministic scorer) or `"left_to_right"` (exact under left-to-right
    decoding). Returns a `(N,)` float64 tensor; see the scorers for their keyword arguments."""
    if scorer not in SCORERS:
        raise ValueError(f"Unknown `scorer` {scorer!r}; allowed: {sorted(SCORERS)}.")
    function = SCORERS[scorer]
    unknown = sorted(set(kwargs) - set(function.__kwdefaults__))
    if unknown:
        raise ValueError(f"The {scorer!r} scorer does not take {unknown}; it accepts {sorted(function.__kwdefaults__)}.")
    return function(model, prompts, answers, **kwargs)


# --- whole texts --------------------------------------------------------------------------------------------------

def _windows(length: int, room: int) -> list[tuple[int, int, int]]:
    """`(context_start, start, end)` windows over a text of `length` tokens: the first scores `[0, room)` with no
    context, each later one scores the next `room // 2` tokens conditioned on the `room - (end - start)` before."""
    if length <= room:
        return [(0, 0, length)]
    stride = max(1, room // 2)
    windows = [(0, 0, room)]
    for start in range(room, length, stride):
        end = min(start + stride, length)
        windows.append((max(0, end - room), start, end))
    return windows


TEXT_SCORERS = ("mc", "left_to_right")  # the scorers that give log p(text) (a bound or exact): not `confidence`


def text_log_likelihood(
    model,
    texts,
    *,
    scorer: str = "mc",
    add_bos_token: bool = False,
    padd_eos: bool = False,
    mask_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    max_length: int | None = None,
    **options,
) -> torch.Tensor:
    """log p(text) of each whole text by a scorer of `TEXT_SCORERS`, a `(N,)` float64 tensor: `"mc"` the Monte Carlo
    ELBO (a lower bound; see `elbo`), `"left_to_right"` the exact log-probability under left-to-right decoding (one
    forward per token, each over the whole window).

    A text that fits the context is one answer with an empty prompt (or BOS with `add_bos_token`); for a model with
    shifted logits (`shift_logits`) and no BOS the first token is the prompt and the rest is scored. A longer one is
    cut into windows: the first `max_length` tokens, then chunks of half that, each scored conditioned on the tokens
    just before it; the sum scores the chain of those truncated-context conditionals. `options` are the scorer's own
    (`mc`: `mc_num`, `mc_batch_size`, and `generator` (one, or a list of one per text) or `seed`).
    """
    if scorer not in TEXT_SCORERS:
        raise ValueError(f"Unknown `scorer` {scorer!r} for whole texts; allowed: {list(TEXT_SCORERS)} (`confidence` "
                         "ranks answers but is not a log-probability).")
    texts = as_sequences(texts, "texts")
    limit = max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    bos = required_id(model, "bos_token_id", bos_token_id, "`add_bos_token=True`") if add_bos_token else None
    # a shifted model predicts each token from the one before it: without BOS the first token only conditions
    first = 1 if logit_shift(getattr(model, "config", None)) and bos is None else 0
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    mask_id = required_id(model, "mask_token_id", mask_token_id, "Scoring")
    prompts, answers, owners = [], [], []
    for index, text in enumerate(texts):  # checked here, so that errors name the text rather than a window of it
        if vocab is not None and any(not 0 <= t < vocab for t in text):
            raise ValueError(f"`texts[{index}]` holds ids outside the vocabulary [0, {vocab}).")
        if mask_id in text:
            raise ValueError(f"`texts[{index}]` holds the mask token (id {mask_id}) at position {text.index(mask_id)}: "
                             "it would be scored as a masked position. Score text without mask tokens.")
        if len(text) <= first:
            raise ValueError(
                f"`texts[{index}]` is empty: there is nothing to score." if not text else
                f"`texts[{index}]` has one token, which this model (shifted logits: each token is predicted from the "
                "one before it) cannot score without a token before it: pass `add_bos_token=True`."
            )
        room = len(text) if limit is None else limit - (bos is not None) - bool(padd_eos)
        if room < 1 + first:
            raise ValueError(f"`max_length` ({limit}) leaves no room for text after BOS/EOS.")
        for context_start, start, end in _windows(len(text) - first, room - first):
            context = text[context_start:start + first]
            prompts.append(context if context else ([bos] if bos is not None else []))
            answers.append(text[start + first:end + first])
            owners.append(index)
    if scorer == "mc":  # one generator per text, shared by its windows
        generators = _generators(options.pop("generator", None), options.pop("seed", None), len(texts))
        options["generator"] = [generators[owner] for owner in owners]
    scores = log_likelihood(model, prompts, answers, scorer=scorer, add_bos_token=False, padd_eos=padd_eos,
                            mask_token_id=mask_token_id, eos_token_id=eos_token_id, max_length=limit, **options)
    return torch.zeros(len(texts), dtype=torch.float64, device=scores.device).index_add_(
        0, torch.tensor(owners, device=scores.device), scores
    )


def elbo(
    model,
    texts,
    *,
    mc_num: int = DEFAULT_MC_NUM,
    mc_batch_size: int | None = None,
    generator: torch.Generator | list | None = None,
    seed: int | None = None,
    add_bos_token: bool = False,
    padd_eos: bool = False,
    mask_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Monte Carlo ELBO of each whole text, a `(N,)` float64 tensor: a lower bound on log p(text), not the exact
    log-likelihood (a masked diffusion LM has none in closed form). `text_log_likelihood` with `scorer="mc"`: texts
    longer than the context are scored in windows, as it says. `generator` may be a list of one generator per text.
    Other arguments are as in `monte_carlo_log_likelihood`. Memory: a forward holds `windows x mc_batch_size` rows of
    window-length logits over the vocabulary; lower `mc_batch_size` or `max_length` for long texts and large
    vocabularies.
    """
    return text_log_likelihood(model, texts, scorer="mc", mc_num=mc_num, mc_batch_size=mc_batch_size,
                               generator=generator, seed=seed, add_bos_token=add_bos_token, padd_eos=padd_eos,
                               mask_token_id=mask_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                               max_length=max_length)


class IlladaLikelihoodMixin:
    """`model.log_likelihood(...)` and `model.elbo(...)` on the model classes: the functions above, bound."""

    def log_likelihood(self, prompts, answers, scorer: str = "mc", **kwargs) -> torch.Tensor:
        """log p(answer | prompt) per pair: `scorer="mc"` (LLaDA's Monte Carlo lower bound; `mc_num`,
        `mc_batch_size`, `cfg_scale`, `generator`/`seed`, ...), `"confidence"` (iLLaDA's deterministic scorer) or
        `"left_to_right"` (exact under left-to-right decoding). See `likelihood.log_likelihood`."""
        return log_likelihood(self, prompts, answers, scorer=scorer, **kwargs)

    def elbo(self, texts, **kwargs) -> torch.Tensor:
        """Monte Carlo ELBO (a lower bound on log p) of whole texts; see `likelihood.elbo`."""
        return elbo(self, texts, **kwargs)

    def text_log_likelihood(self, texts, scorer: str = "mc", **kwargs) -> torch.Tensor:
        """log p of whole texts: `scorer="mc"` (the ELBO) or `"left_to_right"` (exact under left-to-right decoding);
        see `likelihood.text_log_likelihood`."""
        return text_log_likelihood(self, texts, scorer=scorer, **kwargs)


__all__ = [
    "SCORERS",
    "check_monte_carlo",
    "log_likelihood",
    "monte_carlo_log_likelihood",
    "confidence_log_likelihood",
    "left_to_right_log_likelihood",
    "elbo",
    "text_log_likelihood",
    "TEXT_SCORERS",
    "stratified_masks",
    "IlladaLikelihoodMixin",
]
