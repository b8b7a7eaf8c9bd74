"""`hfprune prune` as `python -m hfprune.cli` runs it, recording what every Trainer of the job saw on this rank.

    torchrun --standalone --nproc_per_node 2 prune_distributed.py RECORD_DIR prune MODEL --task ... -o OUT

Writes RECORD_DIR/rank-{RANK}.json (RANK 0 alone without a launcher) when the process exits: per Trainer run
(fine-tuning the head, pruning + recovery, the dense control), the world size, the training wrapper
(DistributedDataParallel under torchrun, the FSDP2 class with --fsdp), the teacher's class, how many parameters
this rank holds (a shard of them under FSDP), the per-device batch, the accumulation steps, the optimizer steps,
the structure pruned so far and how many times this rank had timed models for a speed target.

With FLOPS_TIMER=1 a speed target times models by their FLOPs at batch 2 x 16 instead of the clock: exact and
instant, and different on every rank on purpose (rank r reports every pruned model 1 + r times slower), so that
ranks that each timed would plan differently.
"""

import atexit
import json
import os
import sys
from pathlib import Path

import transformers
from torch.distributed.tensor import DTensor

from hfprune.measure.flops import count_flops
from hfprune.planning import speed_target

records: list[dict] = []
timer_calls: list[list[str]] = []
_train = transformers.Trainer.train
_speed_timer = speed_target.speed_timer


def recording_train(self, *args, **kwargs):
    output = _train(self, *args, **kwargs)
    teacher, args = getattr(self, "teacher_model", None), self.args
    here = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in self.model.parameters())
    records.append({
        "trainer": type(self).__name__, "world_size": args.world_size, "wrapper": type(self.model_wrapped).__name__,
        "teacher": type(teacher).__name__ if teacher is not None else None, "parameters_here": here,
        "per_device_batch": args.per_device_train_batch_size, "accumulation": args.gradient_accumulation_steps,
        "steps": self.state.global_step, "structure": getattr(self.model.config, "hfprune", None),
        "timed": len(timer_calls),
    })  # fmt: skip
    return output


def recording_speed_timer(*args, **kwargs):
    timer = _speed_timer(*args, **kwargs)
    rank = int(os.environ.get("RANK", "0"))

    def recorded(models):
        timer_calls.append(sorted(models))
        if os.environ.get("FLOPS_TIMER"):
            return {
                name: count_flops(model, 2, 16) * (1.0 if name == "dense" else 1.0 + rank)
                for name, model in models.items()
            }
        return timer(models)

    return recorded


def write_records(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    transformers.Trainer.train = recording_train
    speed_target.speed_timer = recording_speed_timer
    atexit.register(write_records, Path(sys.argv[1]))
    sys.argv = ["hfprune", *sys.argv[2:]]
    from hfprune.cli import main

    main()
