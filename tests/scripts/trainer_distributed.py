"""PruningTrainer runs under torchrun / accelerate launch; every rank writes what it ended with.

    torchrun --nproc_per_node 2 trainer_distributed.py OUT_DIR
    accelerate launch --multi_gpu --num_processes 2 trainer_distributed.py OUT_DIR

(CPU and gloo come from `use_cpu=True` / `ddp_backend="gloo"` below; accelerate 1.15 refuses `--multi_gpu --cpu`,
and `--cpu --num_processes 2` alone would run ONE process.)

Two runs, one after the other: a two-step iterative importance prune, and an L0 gate run (the gates are not
part of the DDP module; their gradient is averaged by hand). Each rank writes OUT_DIR/rank-{rank}.json with, per
run: the world size it saw, the training wrapper, its final pruning record, a hash of its final weights, its
pruning history, and hashes of the LOCAL importance scores it computed before the cross-process average (they
differ between ranks, since each scores its own shard of the data).
"""

import hashlib
import json
import os
import sys

import torch
from trainer_common import classification_data, state_hash, tiny_model, tiny_pruning_args
from transformers import default_data_collator

import hfprune.training.trainer
from hfprune.engine.record import get_record
from hfprune.training.trainer import PruningTrainer

local_scores: list[str] = []
_score_units = hfprune.training.trainer.score_units  # the trainer's scores of its own shard, before the average


def recording_score_units(*args, **kwargs):
    scores = _score_units(*args, **kwargs)
    for kind in sorted(scores):
        local_scores.append(hashlib.sha256(scores[kind].nan_to_num(-1).double().numpy().tobytes()).hexdigest())
    return scores


hfprune.training.trainer.score_units = recording_score_units


def run(out_dir: str, method: str) -> dict:
    """One PruningTrainer run on this rank; what it ended with."""
    local_scores.clear()
    method_args = (
        dict(pruning_method="l0", l0_lambda=0.0, l0_steps=12, l0_learning_rate=0.1, l0_init_keep=0.87)
        if method == "l0"
        else dict(pruning_schedule="iterative", pruning_steps=2, target_head_sparsity=0.5, target_ffn_sparsity=0.25)
    )
    args = tiny_pruning_args(
        os.path.join(out_dir, f"run-{method}"), recovery_steps=3, score_num_examples=16, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, seed=3, ddp_backend="gloo", **method_args,
    )  # fmt: skip
    trainer = PruningTrainer(
        model=tiny_model("bert"),
        args=args,
        train_dataset=classification_data(32, seed=0),
        eval_dataset=classification_data(8, seed=1),
        data_collator=default_data_collator,
    )
    trainer.train()
    return {
        "rank": args.process_index,
        "world_size": args.world_size,
        "torch_world_size": torch.distributed.get_world_size(),
        "wrapper": type(trainer.model_wrapped).__name__,
        "record": get_record(trainer.model),
        "state_hash": state_hash(trainer.model),
        "history": [
            {key: entry[key] for key in ("step", "head_sparsity", "ffn_sparsity", "num_parameters")}
            for entry in trainer.pruning_history
        ],
        "local_scores": list(local_scores),
    }


def main() -> None:
    out_dir = sys.argv[1]
    result = {method: run(out_dir, method) for method in ("importance", "l0")}
    with open(os.path.join(out_dir, f"rank-{result['l0']['rank']}.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    # Tear the process group down before exit: left to the interpreter's shutdown, gloo's threads can abort
    # the process ("terminate called without an active exception") on a loaded machine.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
