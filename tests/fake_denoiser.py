"""A deterministic denoiser with no weights, for sampler tests (diffusers' dummy-denoiser pattern).

`FakeDenoiser` is an `IlladaForMaskedDiffusion` whose forward ignores its parameters: at every position it puts
`strength` on one `target` token, both given as tables over absolute positions. Everything the sampler does can
then be predicted by hand: the candidate at position i is `target[i]`, its confidence grows with `strength[i]`.
It records every input it sees, so tests can count forward passes and inspect CFG's unconditional rows.
"""

import torch

from conftest import tiny_config
from modeling_illada import IlladaForMaskedDiffusion, IlladaMaskedDiffusionOutput


class FakeDenoiser(IlladaForMaskedDiffusion):
    def __init__(self, targets, strengths, vocab_size=64, conditional_bonus=None, **config):
        super().__init__(tiny_config(vocab_size=vocab_size, **config))
        self.targets = torch.as_tensor(targets, dtype=torch.long)  # (max positions,)
        self.strengths = torch.as_tensor(strengths, dtype=torch.float)  # (max positions,)
        # optional: (token, extra logit) added when the row's first token is not masked (tests CFG)
        self.conditional_bonus = conditional_bonus
        self.calls = []
        self.eval()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep=0, **kwargs):
        self.calls.append(input_ids.clone())
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length)[None].expand(batch, -1)
        logits = torch.zeros(batch, length, self.config.vocab_size)
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


def word_tokenizer(words=("the", "cat", "sat", "on", "mat", "a", "dog", "ran", "."), extra=()):
    """A tiny offline word-level tokenizer with special tokens at the ids the tiny configs use:
    0 <s>, 1 <pad>, 2 </s>, 3 <mask>, then words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(words) + list(extra))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", mask_token="<mask>",
        padding_side="left",
    )
