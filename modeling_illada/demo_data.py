"""Training data for the embedded demo model (library-only: no Hub file imports this).

The demo is SmolLM2-135M-Instruct adapted to masked diffusion (`illada adapt`, see `demo.py` and the model card). So
that it keeps its base's instruction following, part of its training data is the base's own chat answers: the
autoregressive base (causal, transformers' `generate` with its KV cache) answers the prompts built here, and the
adapter learns to produce those answers by diffusion. This is sequence-level self-distillation, as Dream and the
AR-to-diffusion recipes use a base's data; here the data is the base itself.

* `training_prompts()`: about 500 varied prompts made from templates and topic lists written for this purpose
  (questions, explanations, tips, lists, short stories and poems, rewrites, small talk). None of them asks one of the
  held-out questions of `bench/data/questions.jsonl`, which measure the demo's factual accuracy.
* `answer_prompts()`: the base's answers, written as chats to a JSONL (`illada train --sft` / `illada adapt --sft`
  read it). It appends and skips prompts already answered, so an interrupted run continues where it stopped.
  Answers that were cut at the length limit, or that loop (`repetition` above `max_repetition`), are kept out.

    python -m modeling_illada.demo_data --output runs/demo-chats.jsonl
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

# --- prompts ----------------------------------------------------------------------------------------------------

TOPICS = (
    "the ocean", "autumn", "a lighthouse", "friendship", "the moon", "a rainy day", "coffee", "mountains", "a library",
    "trains", "a garden", "winter mornings", "the city at night", "a lost key", "bicycles", "music", "the desert",
    "a small village", "snow", "birds", "a forest", "the sea breeze", "an old clock", "summer holidays", "a river",
    "the stars", "a cat", "a dog", "bread", "a thunderstorm",
)
CONCEPTS = (
    "photosynthesis", "gravity", "the water cycle", "democracy", "inflation", "a black hole", "evolution",
    "the internet", "electricity", "a vaccine", "climate change", "recycling", "the immune system", "an atom",
    "a volcano", "an earthquake", "the greenhouse effect", "a rainbow", "the seasons", "a computer program",
    "machine learning", "a budget", "compound interest", "sleep", "exercise", "a solar panel", "a battery",
    "friction", "magnetism", "the heart", "digestion", "a language", "an ecosystem", "a cloud", "the tides",
)
ACTIVITIES = (
    "learning a new language", "sleeping better", "staying focused while studying", "saving money", "cooking rice",
    "starting to run", "writing a good email", "making new friends", "keeping a plant alive", "reducing stress",
    "preparing for a job interview", "travelling on a budget", "drinking more water", "organising a desk",
    "reading more books", "speaking in public", "taking better photos", "learning to code", "planning a trip",
    "waking up early", "eating more vegetables", "keeping a journal", "cleaning the kitchen", "walking a dog",
    "learning to swim", "growing tomatoes", "making a cup of tea", "packing a suitcase", "staying warm in winter",
    "being a good listener",
)
CATEGORIES = (
    "fruits", "colours", "musical instruments", "planets", "animals that live in the sea", "types of weather",
    "kitchen tools", "board games", "sports played with a ball", "vegetables", "things you find in a classroom",
    "ways to travel", "jobs in a hospital", "trees", "birds", "shapes", "things that are cold", "flowers",
    "winter clothes", "insects",
)
WORDS = (
    "generous", "curious", "ancient", "fragile", "brave", "humble", "vivid", "patient", "enormous", "gentle",
    "honest", "rapid", "silent", "clever", "calm", "narrow", "polite", "rare", "famous", "quiet",
)
SENTENCES = (
    "give me the report now", "the food was bad and the waiter was slow", "you are late again",
    "I don't want to go to the meeting", "this phone is broken", "tell me where the station is",
    "the weather is nice today", "I lost my keys", "we need more time", "send me the file",
)
# Factual questions about other facts than the held-out set in bench/questions.jsonl.
FACTS = (
    "What is the capital of Spain?", "What is the capital of Canada?", "What is the capital of Egypt?",
    "What is the capital of Australia?", "What is the capital of Kenya?", "What is the capital of Norway?",
    "What is the capital of Mexico?", "What is the capital of India?", "What is the largest ocean on Earth?",
    "How many days are there in a week?", "How many legs does a spider have?", "What do bees make?",
    "What is the boiling point of water in Celsius?", "Which planet is known as the Red Planet?",
    "What gas do plants take in from the air?", "What is the largest mammal?", "How many continents are there?",
    "What is the main language spoken in Brazil?", "Who wrote Romeo and Juliet?", "What is the fastest land animal?",
    "What is the chemical symbol for gold?", "How many hours are in a day?", "What colour is the sky on a clear day?",
    "What is the tallest mountain in the world?", "What do caterpillars turn into?", "What is frozen water called?",
    "Which animal is known as the king of the jungle?", "How many sides does a triangle have?",
    "What is the opposite of hot?", "Which season comes after spring?", "What do cows drink?",
    "What is the closest star to the Earth?", "What instrument has 88 keys?", "What is the currency of Japan?",
    "Which organ pumps blood through the body?", "What is the largest desert in the world?",
)
SMALL_TALK = (
    "Hi! How are you today?", "Tell me a joke.", "What can you help me with?", "Good morning!",
    "Can you tell me something interesting?", "What is your favourite book, and why?", "I feel a bit tired today.",
    "Tell me a fun fact about animals.", "What should I cook for dinner tonight?", "Say something kind.",
    "What is a good name for a cat?", "Can you recommend a hobby?", "What makes a good friend?",
    "I just finished my exams!", "What is the best way to spend a Sunday?", "Give me a riddle.",
)


def training_prompts(seed: int = 0) -> list[str]:
    """The demo's training prompts, in a fixed shuffled order (about 500; see the module docstring)."""
    prompts = list(FACTS) + list(SMALL_TALK)
    prompts += [f"Explain {c} in simple terms." for c in CONCEPTS]
    prompts += [f"What is {c}? Answer in two sentences." for c in CONCEPTS[::2]]
    prompts += [f"Give me three tips for {a}." for a in ACTIVITIES]
    prompts += [f"How do I get started with {a}?" for a in ACTIVITIES[::3]]
    prompts += [f"Write a short poem about {t}." for t in TOPICS]
    prompts += [f"Write a two-sentence story about {t}." for t in TOPICS]
    prompts += [f"Describe {t} in a few sentences." for t in TOPICS[::2]]
    prompts += [f"Name five {c}." for c in CATEGORIES]
    prompts += [f"What does the word \"{w}\" mean? Use it in a sentence." for w in WORDS]
    prompts += [f"Rewrite this sentence to be more polite: \"{s}\"" for s in SENTENCES]
    prompts += [f"Why is {c} important?" for c in CONCEPTS[1::2]]
    prompts += [f"What is {a} + {b}?" for a, b in ((2, 3), (7, 5), (12, 8), (20, 15), (9, 9), (31, 4))]
    prompts += [f"Write one sentence about {t} for a child." for t in TOPICS[1::3]]
    prompts += [f"What are the pros and cons of {a}?" for a in ACTIVITIES[1::4]]
    random.Random(seed).shuffle(prompts)
    return prompts


# --- the base's answers -------------------------------------------------------------------------------------------

def repetition(ids: list[int], n: int = 4) -> float:
    """rep-n: the share of a sequence's n-grams that repeat an earlier n-gram of it (0 = no loop)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def answer_prompts(model, tokenizer, prompts, output, *, batch_size: int = 8, max_new_tokens: int = 192,
                   temperature: float = 0.5, top_p: float = 0.9, repetition_penalty: float = 1.1,
                   max_repetition: float = 0.2, samples: int = 1, seed: int = 0, log=print) -> Path:
    """Append the causal `model`'s chat answers to `prompts` to the JSONL `output` and return its path.

    Each line is `{"messages": [user, assistant]}` (the tokenizer's chat template adds its own system prompt when
    the chats are encoded for training). Prompts already in the file are skipped, so a second call continues an
    interrupted one; each of `samples` draws per prompt is seeded by `seed`, the prompt's index and the draw, so
    the file does not depend on the batching or on interruptions. Answers that reach `max_new_tokens` without
    the end-of-turn token, or whose rep-4 exceeds `max_repetition`, are dropped (counted in the log)."""
    import torch

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if output.exists():
        for line in output.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                done.add((record["messages"][0]["content"], record.get("sample", 0)))
    todo = [(i, p, s) for i, p in enumerate(prompts) for s in range(samples) if (p, s) not in done]
    end_id = tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    kept = dropped = 0
    started = time.time()
    with output.open("a", encoding="utf-8") as handle:
        for first in range(0, len(todo), batch_size):
            batch = todo[first:first + batch_size]
            chats = [[{"role": "user", "content": p}] for _, p, _ in batch]
            inputs = tokenizer.apply_chat_template(chats, add_generation_prompt=True, padding=True,
                                                   return_tensors="pt", return_dict=True)
            torch.manual_seed(seed * 1_000_003 + batch[0][0] * 101 + batch[0][2])
            out = model.generate(**inputs, do_sample=temperature > 0, temperature=temperature or None,
                                 top_p=top_p, repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=end_id)
            for (index, prompt, sample), row in zip(batch, out[:, inputs["input_ids"].shape[1]:].tolist()):
                if end_id not in row:
                    dropped += 1
                    continue
                answer = row[:row.index(end_id)]
                if repetition(answer) > max_repetition or not answer:
                    dropped += 1
                    continue
                text = tokenizer.decode(answer, skip_special_tokens=True).strip()
                record = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}],
                          "sample": sample}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                kept += 1
            handle.flush()
            log(f"{first + len(batch)}/{len(todo)} prompts, {kept} kept, {dropped} dropped, "
                f"{time.time() - started:.0f} s")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeling_illada.demo_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="JSONL of chats to append to")
    parser.add_argument("--samples", type=int, default=1, help="answers drawn per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N prompts")
    args = parser.parse_args(argv)
    import torch

    from .demo import load_base

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_base()
    prompts = training_prompts()[: args.limit]
    answer_prompts(model, tokenizer, prompts, args.output, batch_size=args.batch_size, samples=args.samples,
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
