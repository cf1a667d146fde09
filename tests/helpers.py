"""What the tests share: the tiny model, its special ids, a word-level tokenizer, a weightless denoiser and a runner
of scripts in a fresh Python process.

* `tiny_config(**overrides)` / `tiny_model(seed, **overrides)`: a random 2-layer `IlladaForMaskedDiffusion` (vocab 64,
  hidden 32, context 128, tied head), seeded; `TINY_SIZES` are its layer sizes, shared with the tiny causal LMs of
  `tiny_bases.py` and the configs the training tests write.
* `BOS, PAD, EOS, MASK`: its special ids (0, 1, 2, 3), which every tokenizer here puts its special tokens at.
* `CACHED`: the names of the cache policies that keep keys between steps (approximate), from the registry.
* `word_tokenizer(words, ...)`: a word-level `PreTrainedTokenizerFast` over those ids, then the words (the sampler
  tests' `SAMPLER_WORDS` by default; the Space and lm-eval tests pass their own), optionally with a chat template.
* `FakeDenoiser`: an `IlladaForMaskedDiffusion` whose logits are a table over positions, whatever the tokens: one
  `target` with a `strength` per position, a whole table of logits, or random logits (`FakeDenoiser.random`). The
  sampler, likelihood, shift and lm-eval tests predict its output by hand.
* `run_fresh(script, *args, cwd)`: runs a script in a fresh interpreter, offline, where `import modeling_illada`
  is impossible (only a saved folder's own code can make the model), and returns the JSON its last line prints.

The test environment itself (offline Hugging Face variables, threads) is set up in `conftest.py`, which pytest
imports before any test module, so before transformers reads it.
"""

import json
import os
import subprocess
import sys

import torch

from modeling_illada import IlladaConfig, IlladaForMaskedDiffusion, IlladaMaskedDiffusionOutput
from modeling_illada.caching import CACHES

BOS, PAD, EOS, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = {BOS: "<s>", PAD: "<pad>", EOS: "</s>", MASK: "<mask>"}
CACHED = [name for name, policy in CACHES.items() if not policy.exact]  # "prefix", "dual"
TINY_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)


def tiny_config(**overrides) -> IlladaConfig:
    fields = dict(
        vocab_size=64, **TINY_SIZES, rope_theta=10000.0, mask_token_id=MASK, bos_token_id=BOS, pad_token_id=PAD,
        eos_token_id=EOS, tie_word_embeddings=True,
    )
    fields.update(overrides)
    return IlladaConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> IlladaForMaskedDiffusion:
    torch.manual_seed(seed)
    return IlladaForMaskedDiffusion(tiny_config(**overrides)).eval()


# ---------------------------------------------------------------------------------------------------- tokenizer

SAMPLER_WORDS = ("the", "cat", "sat", "on", "mat", "a", "dog", "ran", ".")


def word_tokenizer(words=SAMPLER_WORDS, *, chat_template: str | None = None, unk_token: str | None = None,
                   split_punctuation: bool = False, padding_side: str = "left"):
    """A tiny offline word-level tokenizer: the special tokens at the tiny config's ids (0 <s>, 1 <pad>, 2 </s>,
    3 <mask>), then `unk_token` when given (id 4: unknown words become it; without it they become <pad>), then
    `words`. Text splits on whitespace, and with `split_punctuation` punctuation splits off too (tokenizers'
    `Whitespace` rather than `WhitespaceSplit`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS[i] for i in sorted(SPECIAL_TOKENS)] + ([unk_token] if unk_token else [])
    vocab = {token: i for i, token in enumerate(specials + list(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token or SPECIAL_TOKENS[PAD]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=SPECIAL_TOKENS[BOS], eos_token=SPECIAL_TOKENS[EOS],
        pad_token=SPECIAL_TOKENS[PAD], mask_token=SPECIAL_TOKENS[MASK], padding_side=padding_side,
        **({"unk_token": unk_token} if unk_token else {}),
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


# ---------------------------------------------------------------------------------------------------- denoiser


class FakeDenoiser(IlladaForMaskedDiffusion):
    """A deterministic denoiser with no weights in play (diffusers' dummy-denoiser pattern).

    Its forward ignores its parameters and the tokens: the logits at absolute position p are `table[p]`, so
    everything a sampler or scorer does can be predicted by hand. Built from `targets` and `strengths` (tables over
    positions; a number is every position's strength), it puts `strength[p]` on token `target[p]` among zeros: the
    candidate at p is `target[p]`, its confidence grows with `strength[p]` (p = e^s / (e^s + V - 1)). Or pass the
    whole `table` `(positions, vocab)`. Positions are `position_ids` when given, else counted over the real tokens
    of a 2-D attention mask. Optional `conditional_bonus = (token, extra logit)` is added to every position of a row
    whose first token is not masked (to test CFG). Every input it sees is kept in `calls`, so tests count forward
    passes and inspect CFG's unconditional rows.
    """

    def __init__(self, targets=None, strengths=None, *, table=None, conditional_bonus=None, **config):
        super().__init__(tiny_config(**config))
        if table is None:  # targets may lie outside the vocabulary at positions a test never reaches
            self.targets = torch.as_tensor(targets, dtype=torch.long)  # (positions,)
            self.strengths = torch.as_tensor(strengths, dtype=torch.float).expand(self.targets.shape)  # (positions,)
        self.table = None if table is None else torch.as_tensor(table, dtype=torch.float)  # (positions, V)
        self.conditional_bonus = conditional_bonus
        self.calls = []
        self.eval()

    @classmethod
    def random(cls, seed: int = 0, scale: float = 3.0, **config) -> "FakeDenoiser":
        """Random logits (`scale` x N(0, 1), from `seed`) at every position of the context: p(x_0 | x_t) factorises,
        so log p(answer | prompt) is exactly the sum of the answer's per-position log-probs."""
        tiny = tiny_config(**config)
        table = scale * torch.randn(tiny.max_position_embeddings, tiny.vocab_size,
                                    generator=torch.Generator().manual_seed(seed))
        return cls(table=table, **config)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
        self.calls.append(input_ids.clone())
        if position_ids is None:
            real = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            real = torch.ones_like(input_ids) if real is None else real
            position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
        if self.table is not None:
            logits = self.table[position_ids]  # (B, L, V), a copy
        else:
            logits = torch.zeros(*position_ids.shape, self.config.vocab_size)
            logits.scatter_(-1, self.targets[position_ids][..., None], self.strengths[position_ids][..., None])
        if self.conditional_bonus is not None:
            token, bonus = self.conditional_bonus
            conditioned = input_ids[:, 0] != self.config.mask_token_id  # (B,)
            logits[conditioned, :, token] += bonus
        if isinstance(logits_to_keep, int):
            keep = slice(-logits_to_keep, None) if logits_to_keep > 0 else slice(None)
        else:
            keep = logits_to_keep
        return IlladaMaskedDiffusionOutput(logits=logits[:, keep])


# ---------------------------------------------------------------------------------------------------- fresh process

WITHOUT_PACKAGE = 'import sys\nsys.modules["modeling_illada"] = None  # the package must not be importable\n'


def run_fresh(script: str, *args, cwd, timeout: float = 300, parse: bool = True):
    """Run `script` (Python source) as `python -c script args...` in `cwd`, offline, with its own Hugging Face home
    and modules cache under `cwd`, no PYTHONPATH, no stdin, and `import modeling_illada` made impossible. Returns
    the JSON object the last line of its output holds (`parse=False`: the whole output); a failure, or no output,
    raises AssertionError with the end of its stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=os.path.join(cwd, "hf"), HF_MODULES_CACHE=os.path.join(cwd, "modules"))
    result = subprocess.run([sys.executable, "-c", WITHOUT_PACKAGE + script, *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]) if parse else result.stdout
