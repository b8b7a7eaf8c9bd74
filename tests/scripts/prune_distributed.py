"""`hfprune prune` as `python -m hfprune.cli` runs it, recording what every Trainer of the job saw on this rank.

    torchrun --standalone --nproc_per_node 2 prune_distributed.py RECORD_DIR prune MODEL --task ... -o OUT

Writes RECORD_DIR/rank-{RANK}.json (RANK 0 alone without a launcher) when the process exits: per Trainer run
(fine-tuning the head, pruning + recovery, the dense control), the world size, the training wrapper
(DistributedDataParallel under torchrun), the per-device batch, the accumulation steps and the optimizer steps.
"""

import atexit
import json
import os
import sys
from pathlib import Path

import transformers

records: list[dict] = []
_train = transformers.Trainer.train


def recording_train(self, *args, **kwargs):
    output = _train(self, *args, **kwargs)
    records.append({
        "trainer": type(self).__name__, "world_size": self.args.world_size, "wrapper": type(self.model_wrapped).__name__,
        "per_device_batch": self.args.per_device_train_batch_size, "accumulation": self.args.gradient_accumulation_steps,
        "steps": self.state.global_step,
    })  # fmt: skip
    return output


def write_records(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    transformers.Trainer.train = recording_train
    atexit.register(write_records, Path(sys.argv[1]))
    sys.argv = ["hfprune", *sys.argv[2:]]
    from hfprune.cli import main

    main()
