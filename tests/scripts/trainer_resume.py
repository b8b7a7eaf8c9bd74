"""An iterative PruningTrainer run that checkpoints often, for the kill-and-resume test.

    python trainer_resume.py OUTPUT_DIR FINAL_DIR [--slow] [--resume]

`--slow` sleeps after every optimizer step so the test can kill the process mid-run; `--resume` continues
from the latest checkpoint in OUTPUT_DIR. The final model goes to FINAL_DIR with `history.json`.
"""

import argparse
import json
import os
import time

from trainer_common import classification_data, state_hash, tiny_model, tiny_pruning_args
from transformers import TrainerCallback, default_data_collator

from hfprune.training.trainer import PruningTrainer


class Sleep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("final_dir")
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()

    model = tiny_model("bert")  # the same original model (seeded) in every process
    args = tiny_pruning_args(
        options.output_dir, pruning_method="importance", pruning_schedule="iterative", pruning_steps=3,
        target_head_sparsity=0.5, target_ffn_sparsity=0.5, recovery_epochs=1.0, distillation_alpha=0.3,
        score_num_examples=16, save_strategy="steps", save_steps=2, full_determinism=True, seed=7,
    )  # fmt: skip
    trainer = PruningTrainer(
        model=model,
        args=args,
        train_dataset=classification_data(32, seed=0),
        eval_dataset=classification_data(16, seed=1),
        data_collator=default_data_collator,
        callbacks=[Sleep()] if options.slow else None,
    )
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    trainer.save_model(options.final_dir)
    history = [
        {key: value for key, value in entry.items() if not key.endswith(("_runtime", "_per_second", "_time"))}
        for entry in trainer.pruning_history
    ]
    with open(os.path.join(options.final_dir, "history.json"), "w") as handle:
        json.dump({"history": history, "state_hash": state_hash(trainer.model)}, handle, indent=2)


if __name__ == "__main__":
    main()
