"""Certainty-forcing self-distillation: teach a masked diffusion LM to be confident early, so that
confidence-threshold parallel decoding reveals several tokens per forward (library-only: no Hub file imports this).

The recipe follows dParallel (arXiv 2509.26488; described there, implemented here from the description):

1. *Trajectories*: the model itself (the teacher) decodes prompts greedily, semi-autoregressively in blocks, one
   token per step (`generate_trajectories`). The student learns to reproduce these outputs, so its greedy
   decoding stays close to the teacher's. Or (`sft`, ours) given chat answers are the targets, e.g. the answers of
   the autoregressive model a diffusion model was adapted from: no teacher pass, which on a CPU is the costly part.
2. *Semi-autoregressive masking* (`CertaintyForcingCollator`): for each trajectory one generation block is drawn;
   the prompt and earlier blocks stay clean, the block's tokens are masked with probability p = (1 - eps) t + eps
   (t uniform, stratified across the batch), and every later position is a mask, as the sampler sees it.
3. *Loss* (`certainty_forcing_loss`): cross-entropy of the teacher's tokens at the masked block positions, plus
   `certainty_weight` x the mean entropy of the student's predictions at the masked positions it already gets
   right. Minimising that entropy pushes correct predictions to high confidence, so a 0.9 threshold passes them
   many at a time instead of one per step.
4. *Text replay* (`text_weight`, our addition): each batch also carries as many sequences of the original corpus
   under the plain masked-diffusion loss (`collators.PretrainCollator`), weighted by `text_weight`. Without it the
   student drifts into a model of its own loops (on the demo model: held-out ELBO from 5.1 to 8.2 nats/token,
   worse than a unigram); dParallel limits drift with LoRA instead.

How it differs from dParallel: full fine-tuning (the models here are small) instead of LoRA, and the teacher's
trajectories can come from its dual-cache sampler (`cache="dual"`, the default: about 3x cheaper on CPU, and the
sampler the student is then used with). The trade is measured in `bench/bench_demo.py`: tokens per forward up,
ELBO of the outputs (scored by the teacher) down.

`distill()` runs the whole recipe on the stock `transformers.Trainer` (the loss lives in `compute_loss`) and
writes a Hub-native folder whose generation config turns on parallel decoding and the dual cache.
"""

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .diffusion import align_predictions, logit_shift, masked_diffusion_loss
from .collators import EPS, TIME_SAMPLING, PretrainCollator, batch_generator, mask_probability
from .corpus import encode_conversation, pack_documents, read_conversations, read_documents, split_documents
from .training import check_output_dir, finish_run, load_model, run_trainer


# ---------------------------------------------------------------------------------------------------------------
# 1. Teacher trajectories


def distillation_prompts(documents: list[str], tokenizer, count: int, prompt_tokens=(1, 4), seed: int = 0) -> list[list[int]]:
    """`count` prompts: the first k tokens of distinct documents, k drawn uniformly from `prompt_tokens` (min, max)."""
    low, high = prompt_tokens
    if not 1 <= low <= high:
        raise ValueError(f"`prompt_tokens` must be (min, max) with 1 <= min <= max, got {prompt_tokens!r}.")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` (number of prompts) must be a positive integer, got {count!r}.")
    rng = random.Random(seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    prompts = []
    for index in order:
        ids = tokenizer(documents[index], add_special_tokens=False)["input_ids"]
        k = rng.randint(low, high)
        if len(ids) >= k:
            prompts.append(ids[:k])
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise ValueError(f"Only {len(prompts)} documents have at least {low} tokens; `count` asked for {count}.")
    return prompts


@torch.no_grad()
def generate_trajectories(model, prompts: list[list[int]], max_new_tokens: int = 224, block_length: int = 32,
                          batch_size: int = 16, cache: str = "dual", log=None) -> list[dict]:
    """The teacher's greedy outputs for `prompts`: `[{"input_ids": prompt + output, "prompt_length": k}]`.

    One token per step, low-confidence remasking, no early stop (the whole canvas is the model's own text). Prompts
    are batched by length, so no row is padded; the result keeps the order of `prompts`."""
    from .caching import CACHES

    if cache not in CACHES:
        raise ValueError(f"Unknown `cache` {cache!r} for the teacher; allowed: {sorted(CACHES)}.")
    if max_new_tokens % block_length:
        raise ValueError(f"`max_new_tokens` ({max_new_tokens}) must be a multiple of `block_length` ({block_length}).")
    model.eval()
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    results: list[dict | None] = [None] * len(prompts)
    done, started = 0, time.time()
    for length, indices in sorted(by_length.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long)  # (b, k)
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, steps=max_new_tokens, block_length=block_length, temperature=0.0,
                remasking="low_confidence", cache=cache, parallel_decoding=False, eos_early_stop=False, cfg_scale=0.0,
            )  # (b, k + max_new_tokens)
            for row, i in enumerate(chunk):
                results[i] = {"input_ids": out[row].tolist(), "prompt_length": length}
            done += len(chunk)
            if log is not None:
                log(f"trajectories: {done}/{len(prompts)} ({time.time() - started:.0f}s)")
    return results


def write_trajectories(path, trajectories: list[dict]) -> None:
    with open(path, "w") as f:
        for t in trajectories:
            f.write(json.dumps(t) + "\n")


def read_trajectories(path) -> list[dict]:
    trajectories = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for t in trajectories:
        if set(t) != {"input_ids", "prompt_length"} or not 0 < t["prompt_length"] < len(t["input_ids"]):
            raise ValueError(f"{str(path)!r} is not a trajectory file: each line must be "
                             '{"input_ids": [...], "prompt_length": k} with 0 < k < len(input_ids).')
    return trajectories


# ---------------------------------------------------------------------------------------------------------------
# 2. Semi-autoregressive masking


@dataclass
class CertaintyForcingCollator:
    """Batches of trajectories masked as the block sampler sees them (see the module docstring, step 2).

    Emits `input_ids` (rows right-padded with masks: more masked future), `labels` (the teacher's tokens at the
    masked positions of the drawn block, -100 elsewhere) and `loss_weights` (1 / number of labelled positions in
    the batch: the mean cross-entropy). The noise of a batch is seeded by `seed` and the batch's tokens, as in
    `collators.MaskedDiffusionCollator`, so a resumed run draws what an uninterrupted one does."""

    mask_token_id: int
    block_length: int = 32
    eps: float = EPS
    time_sampling: str = "stratified"
    seed: int | None = 0

    def __post_init__(self):
        if not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
            raise ValueError(f"`mask_token_id` must be a non-negative integer, got {self.mask_token_id!r}.")
        if not isinstance(self.block_length, int) or self.block_length < 1:
            raise ValueError(f"`block_length` must be a positive integer, got {self.block_length!r}.")
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"Unknown `time_sampling` {self.time_sampling!r}; allowed: {sorted(TIME_SAMPLING)}.")

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        batch = len(features)
        x0 = torch.full((batch, length), self.mask_token_id, dtype=torch.long)  # (B, L)
        for row, f in enumerate(features):
            x0[row, : len(f["input_ids"])] = torch.tensor(f["input_ids"], dtype=torch.long)
        generator = batch_generator(self.seed, x0) if self.seed is not None else None
        p = mask_probability(TIME_SAMPLING[self.time_sampling](batch, generator), self.eps)  # (B,)
        positions = torch.arange(length)  # (L,)
        noisy = x0.clone()
        labels = torch.full_like(x0, -100)
        for row, f in enumerate(features):
            start, end = f["prompt_length"], len(f["input_ids"])
            blocks = -(-(end - start) // self.block_length)
            block = int(torch.randint(blocks, (1,), generator=generator))
            lo, hi = start + block * self.block_length, min(start + (block + 1) * self.block_length, end)
            masked = torch.rand(hi - lo, generator=generator) < p[row]  # (hi - lo,)
            if not masked.any():  # at least one position to learn from
                masked[int(torch.randint(hi - lo, (1,), generator=generator))] = True
            in_block = torch.zeros(length, dtype=torch.bool)
            in_block[lo:hi] = masked
            labels[row, in_block] = x0[row, in_block]
            noisy[row, in_block | (positions >= hi)] = self.mask_token_id
        weights = (labels != -100).float() / (labels != -100).sum().clamp(min=1)  # (B, L)
        return {"input_ids": noisy, "labels": labels, "loss_weights": weights}


@dataclass
class ReplayCollator:
    """Batches of `{"trajectory": ..., "text": ...}` pairs: the trajectories through `CertaintyForcingCollator`, the
    text (packed sequences) through the plain forward process, rows stacked (trajectories first, right-padded with
    masks to a common length). The text rows' `loss_weights` are LLaDA's, times `text_weight`; `certainty_rows`
    marks the rows the entropy term applies to."""

    trajectories: CertaintyForcingCollator
    text: "PretrainCollator"
    text_weight: float = 1.0

    def __call__(self, features: list[dict]) -> dict:
        cf = self.trajectories([f["trajectory"] for f in features])
        tx = self.text([f["text"] for f in features])
        tx["loss_weights"] = tx["loss_weights"] * self.text_weight
        length = max(cf["input_ids"].shape[1], tx["input_ids"].shape[1])
        fill = {"input_ids": self.trajectories.mask_token_id, "labels": -100, "loss_weights": 0.0}

        def widen(batch, name):
            pad = length - batch[name].shape[1]
            return F.pad(batch[name], (0, pad), value=fill[name]) if pad else batch[name]

        out = {name: torch.cat([widen(cf, name), widen(tx, name)]) for name in fill}  # (2B, L) each
        out["certainty_rows"] = torch.arange(2 * len(features)) < len(features)  # (2B,)
        return out


class ReplayDataset(torch.utils.data.Dataset):
    """Pairs trajectory `i % T` with text sequence `i`: as long as the longer of the two lists."""

    def __init__(self, trajectories: list[dict], text: list[dict]):
        self.trajectories, self.text = trajectories, text

    def __len__(self):
        return max(len(self.trajectories), len(self.text))

    def __getitem__(self, i):
        return {"trajectory": self.trajectories[i % len(self.trajectories)], "text": self.text[i % len(self.text)]}


# ---------------------------------------------------------------------------------------------------------------
# 3. The loss and the Trainer


def certainty_forcing_loss(logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor,
                           certainty_weight: float = 1.0, certainty_rows: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(loss, cross_entropy, certainty)` for `logits` `(B, L, V)`, `labels` / `loss_weights` `(B, L)`.

    cross_entropy = sum(CE x loss_weights) over labelled positions; certainty = mean entropy (nats) of the
    predictions at the labelled positions whose argmax equals the label (0 when there are none), in the rows
    `certainty_rows` `(B,)` marks (default: every row); loss = cross_entropy + certainty_weight x certainty."""
    cross_entropy = masked_diffusion_loss(logits, labels, loss_weights)
    labelled = labels != -100  # (B, L)
    rows = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device) if certainty_rows is None \
        else certainty_rows.to(labels.device)
    logits = logits.float()[labelled]  # (N, V)
    targets = labels[labelled]  # (N,)
    log_probs = logits.log_softmax(-1)  # (N, V)
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # (N,)
    in_rows = rows[:, None].expand_as(labels)[labelled]  # (N,)
    correct = ((logits.argmax(-1) == targets) & in_rows).float()  # (N,)
    certainty = (entropy * correct).sum() / correct.sum().clamp(min=1)
    return cross_entropy + certainty_weight * certainty, cross_entropy, certainty


def certainty_forcing_trainer(certainty_weight: float = 1.0):
    """A `transformers.Trainer` subclass whose `compute_loss` is `certainty_forcing_loss` (also logged apart)."""
    from transformers import Trainer

    class CertaintyForcingTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, weights = inputs.pop("labels"), inputs.pop("loss_weights")
            rows = inputs.pop("certainty_rows", None)
            outputs = model(**inputs)
            shift = logit_shift(getattr(model, "module", model).config)  # labels are in canvas columns
            loss, cross_entropy, certainty = certainty_forcing_loss(align_predictions(outputs.logits, shift), labels,
                                                                    weights, certainty_weight, rows)
            if model.training:  # the parts of the last training step, added to the next log line
                self._parts = {"cross_entropy": cross_entropy.item(), "certainty": certainty.item()}
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and getattr(self, "_parts", None):
                logs = {**logs, **self._parts}
            super().log(logs, *args, **kwargs)

    return CertaintyForcingTrainer


# ---------------------------------------------------------------------------------------------------------------
# 4. The driver


def distill(output_dir, recipe=None, *, overwrite: bool = False, resume=None, disable_tqdm: bool = False, log=print,
            **fields):
    """Certainty-forcing self-distillation of `recipe.model` (folder or Hub id) into `output_dir`; returns the
    `Trainer`. `recipe` is a `recipes.DistillRecipe`, or the teacher's folder / Hub id (`distill(out, "runs/mine",
    data=[...])`); `fields` replace its fields.

    Prompts are the first 1-4 tokens (`prompt_tokens`) of `num_prompts` documents of `data` (plain text, split by
    `doc_separator` as in `training.train`), taken from the training side of the split `train()` makes with
    `eval_fraction=heldout_fraction`, so the held-out documents of the model's own training stay unseen.
    `trajectories` is a JSONL path: read if it exists, else generated and written there (never overwritten), so the
    costly teacher pass runs once. `sft` chats replace the teacher pass: their answers (the training side of the
    same split) are the targets, each after its prompt in the chat template. With `text_weight` > 0 every batch also
    replays `batch_size` sequences of that training split (packed to `seq_length`, default the model's context)
    under the plain masked-diffusion loss. A held-out `eval_fraction` of the trajectories reports the loss every
    `eval_steps`. The saved generation config enables parallel decoding at `threshold` with the dual cache and
    greedy decoding at `block_length`; everything else is `model`'s."""
    from transformers import AutoTokenizer

    from .recipes import DistillRecipe

    started = time.time()
    if isinstance(recipe, (str, Path)):
        recipe, fields = None, {"model": str(recipe), **fields}
    recipe = DistillRecipe.build(recipe, fields)
    output_dir = Path(output_dir)
    checkpoint = check_output_dir(output_dir, overwrite, resume)
    if recipe.model is None:
        raise ValueError("`model` is required: the teacher (and starting student), a model folder or Hub id.")
    if recipe.text_weight > 0 and not recipe.data:
        raise ValueError("Text replay (`text_weight` > 0) needs `data`, the corpus; pass it or set `text_weight=0`.")

    # 1. The teacher and its trajectories (a resumed run gets the student's weights back from the Trainer)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    net = load_model(recipe.model)
    shift = logit_shift(net.config)
    context = net.config.max_position_embeddings
    # the training side of the split `train()` made: prompts and replayed text come from it
    documents = split_documents(read_documents(recipe.data, recipe.doc_separator), recipe.heldout_fraction)[0] \
        if recipe.data else []
    if recipe.sft:  # given answers as targets: the training side of the split `train()` made of these chats
        chats = split_documents(read_conversations(recipe.sft), recipe.heldout_fraction)[0]
        records = [encode_conversation(tokenizer, messages, context) for messages in chats]
        log(f"{len(records)} chat answers as targets (from {len(recipe.sft)} file(s))")
    elif recipe.trajectories is not None and Path(recipe.trajectories).is_file():
        records = read_trajectories(recipe.trajectories)
        log(f"read {len(records)} trajectories from {recipe.trajectories}")
    else:
        if not recipe.data:
            raise ValueError("Pass `data` (text the prompts are cut from) or an existing `trajectories` file.")
        prompts = distillation_prompts(documents, tokenizer, recipe.num_prompts, tuple(recipe.prompt_tokens),
                                       recipe.seed)
        if max(map(len, prompts)) + recipe.max_new_tokens > context:
            raise ValueError(
                f"`max_new_tokens` ({recipe.max_new_tokens}) + the longest prompt ({max(map(len, prompts))}) exceed "
                f"the model's context (`max_position_embeddings` = {context})."
            )
        records = generate_trajectories(net, prompts, recipe.max_new_tokens, recipe.block_length,
                                        recipe.generation_batch_size, recipe.teacher_cache, log=log)
        if recipe.trajectories is not None:
            write_trajectories(recipe.trajectories, records)
    train_set, eval_set = split_documents(records, recipe.eval_fraction)
    collator = CertaintyForcingCollator(net.config.mask_token_id, recipe.block_length, seed=recipe.seed,
                                        time_sampling=recipe.time_sampling)
    text_sequences = 0
    seq_length = recipe.seq_length or context
    if recipe.text_weight > 0:  # 2. Text replay: the corpus's training split, packed as `train()` packs it
        if seq_length > context:
            raise ValueError(f"`seq_length` {seq_length} exceeds the model's context "
                             f"(`max_position_embeddings` = {context}).")
        text = pack_documents(documents, tokenizer, seq_length)
        text_sequences = len(text)
        train_set = ReplayDataset(train_set, text)
        replay = PretrainCollator(net.config.mask_token_id, seed=recipe.seed, time_sampling=recipe.time_sampling,
                                  loss_weighting=recipe.loss_weighting, shift_logits=bool(shift))
        collator = ReplayCollator(collator, replay, recipe.text_weight)
        if eval_set:  # held-out trajectories with text, so evaluation batches have the training layout
            eval_set = ReplayDataset(eval_set, text[: len(eval_set)])

    # 3. The student (the same weights) on the plain Trainer with the certainty-forcing loss
    net.train()
    trainer = run_trainer(output_dir, recipe, net=net, tokenizer=tokenizer, train_set=train_set, eval_set=eval_set,
                          collator=collator, checkpoint=checkpoint, disable_tqdm=disable_tqdm,
                          trainer_class=certainty_forcing_trainer(recipe.certainty_weight))

    # 4. The fast sampler becomes the saved default
    net.generation_config.update(parallel_decoding=True, threshold=recipe.threshold, cache="dual",
                                 block_length=recipe.block_length, temperature=0.0)  # validates
    finish_run(trainer, output_dir, recipe, started=started, checkpoint=checkpoint, objective="certainty_forcing",
               text_sequences=text_sequences, train_sequences=len(train_set), eval_sequences=len(eval_set))
    return trainer
