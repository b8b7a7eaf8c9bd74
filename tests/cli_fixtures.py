"""Tiny, fast stand-ins for a real job: a 2-layer BERT with a WordPiece tokenizer, and SST-2 in GLUE's layout.

The sentences are built from a few sentiment words so that the task is learnable in a few steps; the vocab
holds every word, so nothing maps to [UNK].
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
import transformers

def subprocess_environment(**extra: str) -> dict[str, str]:
    """The environment for a job in a subprocess, read when it starts (so with this test's own latency cache,
    `HFPRUNE_LATENCY_CACHE`): one thread, offline, quiet transformers, plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **extra}


POSITIVE = ["good", "great", "fun", "moving", "charming", "brilliant"]
NEGATIVE = ["bad", "dull", "boring", "flat", "tedious", "awful"]
FILLER = ["the", "film", "is", "a", "story", "and", "plot", "very", "quite", "'s"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + FILLER + ["''", '"', "."]


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        if i % 7 == 0:
            words.append('"')  # GLUE's SST-2 has bare quote characters: the reader must not treat them as quoting
        rows.append((" ".join(words) + " .", label))
    return rows


def write_sst2(glue_dir: Path, n_train: int = 256, n_dev: int = 24) -> Path:
    """`glue_dir/SST-2/{train,dev}.tsv` with GLUE's header and layout."""
    folder = glue_dir / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train.tsv", n_train, 0), ("dev.tsv", n_dev, 1)):
        lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in sentences(n, seed)]
        (folder / name).write_text("\n".join(lines) + "\n")
    return glue_dir


def write_tiny_bert(folder: Path, *, with_head: bool = False, seed: int = 0) -> Path:
    """A 2-layer, 4-head BERT + BertTokenizerFast saved with `save_pretrained`.

    Without a head it is saved as a bare `BertModel` (like bert-base-uncased or MiniLM): pruning it for a
    task must fine-tune a new classifier first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5 takes the vocabulary itself (a `vocab_file=` keyword is silently ignored, leaving a
    # 5-token tokenizer that reads every word as [UNK])
    tokenizer = transformers.BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)}, do_lower_case=True)
    assert len(tokenizer) == len(VOCAB)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(seed)
    model_class = transformers.BertForSequenceClassification if with_head else transformers.BertModel
    model = model_class(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to check that nothing changed)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result, code: int = 2) -> str:
    """The result failed with `code` and printed exactly one line, an "Error: ..." one, and no traceback."""
    stderr = result.stderr.strip()
    assert result.exit_code == code, (result.exit_code, result.stdout[-2000:], stderr[-2000:])
    assert len(stderr.splitlines()) == 1 and stderr.startswith("Error: "), stderr
    assert "Traceback" not in result.stdout + stderr
    return stderr


def write_tiny_llama_and_text(folder: Path, *, num_layers: int = 2, num_kv_heads: int = 4) -> tuple[Path, Path]:
    """A tiny Llama (with the tiny BERT's tokenizer) and a text folder: 60 lines of train.txt to calibrate and
    distil on, 20 of validation.txt held out for perplexity. Returns `(model folder, text folder)`."""
    write_tiny_bert(folder / "tok")  # only for its tokenizer
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tok")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=64,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder / "llama")
    tokenizer.save_pretrained(folder / "llama")
    words = [text for text, _ in sentences(80, 0)]
    (folder / "text").mkdir()
    (folder / "text" / "train.txt").write_text("\n".join(words[:60]))
    (folder / "text" / "validation.txt").write_text("\n".join(words[60:]))  # held out: never calibrated on
    return folder / "llama", folder / "text"

