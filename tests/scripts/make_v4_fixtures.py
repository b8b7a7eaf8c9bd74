"""Build the transformers-4 fixtures of tests/test_convert.py: tiny random checkpoints pruned with v4's own
`model.prune_heads`, saved with v4's `save_pretrained`, plus v4's logits on fixed inputs.

Run it with a transformers 4 install, never with transformers 5 (v5 removed `prune_heads`):

    python3 -m venv /work/venv-tf4 && /work/venv-tf4/bin/pip install torch==2.13.0 'transformers<5'
    /work/venv-tf4/bin/python tests/scripts/make_v4_fixtures.py     # rewrites tests/fixtures/v4/

Each fixture folder holds `config.json` (with v4's `pruned_heads`), `model.safetensors` and `expected.safetensors`
(`input_ids`, `attention_mask` and v4's `logits`). Every pruning follows the same plan, in ORIGINAL head indices:
the first call prunes heads, the checkpoint is saved and reloaded (v4 re-applies `config.pruned_heads` on load),
then a second call prunes again, so `pruned_heads` is accumulated over two calls and a save/reload, as it was on
the Hub. Layer 0 is pruned in both calls, layer 1 keeps one head out of four, and a head pruned twice is a no-op.

XLNet is the exception: v4's `XLNetModel._prune_heads` raises NotImplementedError after `prune_heads` has already
written `config.pruned_heads`, so such a checkpoint holds every head and v4 cannot load it. Its expected logits are
v4's with those heads masked through `head_mask` (removing a head and masking it are the same function).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

if int(transformers.__version__.split(".")[0]) >= 5:
    sys.exit(f"this script needs transformers 4 (found {transformers.__version__}): v5 has no prune_heads")

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "v4"
VOCAB = 99
SMALL = dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=24, max_position_embeddings=32)
FIXTURES = {
    # name -> (config class, config kwargs, model class)
    "bert": ("BertConfig", dict(SMALL, type_vocab_size=2), "BertForSequenceClassification"),
    "roberta": ("RobertaConfig", dict(SMALL, type_vocab_size=1, pad_token_id=1, max_position_embeddings=40), "RobertaForSequenceClassification"),
    "electra": ("ElectraConfig", dict(SMALL, embedding_size=16), "ElectraForSequenceClassification"),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=3, n_heads=4, hidden_dim=24, max_position_embeddings=32), "DistilBertForSequenceClassification"),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=3, n_head=4, n_inner=24, n_positions=32, bos_token_id=1, eos_token_id=2), "GPT2LMHeadModel"),
    "xlnet": ("XLNetConfig", dict(d_model=32, n_layer=3, n_head=4, d_inner=24), "XLNetForSequenceClassification"),
}
FIRST = {0: [1], 2: [0, 3]}
SECOND = {0: [2], 1: [0, 1, 3], 2: [3]}  # layer 0 again, layer 1 down to head 2, head 3 of layer 2 already gone


def build(name: str) -> torch.nn.Module:
    config_name, kwargs, model_name = FIXTURES[name]
    config = getattr(transformers, config_name)(vocab_size=VOCAB, num_labels=3, **kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # random init leaves biases at zero and norms at identity: perturb everything
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def head_mask(model: torch.nn.Module) -> torch.Tensor:
    """[layers, heads] mask with 0 for every head listed in `config.pruned_heads`."""
    config = model.config
    mask = torch.ones(config.num_hidden_layers, config.num_attention_heads)
    for layer, heads in config.pruned_heads.items():
        mask[int(layer), list(heads)] = 0
    return mask


def make(name: str, plans: list[dict[int, list[int]]]) -> None:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    model = build(name)
    model_class = type(model)
    with tempfile.TemporaryDirectory() as tmp:
        for number, plan in enumerate(plans):
            if number and name != "xlnet":  # save and reload: v4 re-applies the accumulated pruned_heads on load
                model.save_pretrained(tmp)
                model = model_class.from_pretrained(tmp, attn_implementation="eager").eval()
            try:
                model.prune_heads(plan)
            except NotImplementedError:  # XLNet: the config was updated, the weights were not
                pass
    model.save_pretrained(folder, safe_serialization=True)
    batch = inputs()
    with torch.no_grad():
        if name == "xlnet":
            logits = model(**batch, head_mask=head_mask(model)).logits
        else:
            reloaded = model_class.from_pretrained(folder, attn_implementation="eager").eval()
            logits = reloaded(**batch).logits
            assert torch.equal(logits, model(**batch).logits), name
    save_file({**batch, "logits": logits.contiguous()}, str(folder / "expected.safetensors"))
    if name == "bert":
        save_tokenizer(folder)
    print(f"{name}: pruned_heads {dict(sorted(model.config.pruned_heads.items()))}, logits {tuple(logits.shape)}")


def save_tokenizer(folder: Path) -> None:
    """A 99-token WordPiece vocabulary, so that `hfprune convert` has a tokenizer to carry over."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [chr(ord("a") + i) for i in range(26)] + [f"w{i}" for i in range(VOCAB - 26 - len(special))]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(special + words) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in FIXTURES:
        make(name, [FIRST, SECOND])
    total = sum(path.stat().st_size for path in OUT.rglob("*") if path.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB), transformers {transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
