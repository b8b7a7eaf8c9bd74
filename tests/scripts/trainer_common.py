"""Tiny model and data shared by the PruningTrainer test scripts (they run as separate processes)."""

import hashlib
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from conftest import VOCAB, tiny_model, tiny_pruning_args  # noqa: E402,F401  (tiny_pruning_args: for the scripts)


def classification_data(num_examples: int, seed: int, length: int = 8) -> list[dict]:
    """Random token sequences whose label (first token mod 3) a tiny BERT can learn a little."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (num_examples, length), generator=generator)
    return [
        {"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": int(ids[0] % 3)}
        for ids in input_ids
    ]


def state_hash(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, shapes and exact bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


__all__ = ["classification_data", "state_hash", "tiny_model"]
