"""`prune_for_task(..., dry_run=True)`: the one-shot plan on the model as loaded, and nothing else.

Kept out of the pipeline because it shares none of the run's machinery: no work directory, no fine-tuning,
no recovery, no output. It answers "what would go, and how many FLOPs would that save" in seconds.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io.checkpoint import ModelSource, load_model_for_task
from ..measure.flops import count_flops
from ..measure.sparsity import sparsity_summary
from ..pruning_config import PruningConfig
from ..tasks.task_data import TaskData, padding_collator, tokenize_split
from ..training.trainer import PruningTrainer
from .finetune import quiet_trainer
from .results import PruneResult

__all__ = ["plan_pruning"]


def plan_pruning(
    source: ModelSource,
    data: TaskData,
    args: PruningConfig,
    settings: dict[str, Any],
    output_dir: Path,
    *,
    seed: int,
    max_length: int,
    say: Callable[[str], None],
) -> PruneResult:
    """The plan `args` makes for `source` (`PruneResult.sparsity`, FLOPs in `settings`), with `dry_run=True`.

    A model without a trained head is planned with its untrained one: gradient scores then differ from what the
    real run (which fine-tunes first) uses; magnitude and random plans are the same.
    """
    say(f"dry run: loading {source.display_name} for {data.name}")
    model, tokenizer, has_head = load_model_for_task(source, data)
    train = tokenize_split(data, data.train, tokenizer, max_length)
    base_parameters = sum(p.numel() for p in model.parameters())
    flops_before = count_flops(model.eval(), 1, max_length)
    score_dataset = train.shuffle(seed=seed + 1).select(range(min(args.score_num_examples, len(train))))
    with tempfile.TemporaryDirectory() as scratch:
        args.output_dir = scratch  # nothing is saved: save_strategy is "no" and there is no recovery
        trainer = PruningTrainer(
            model=model, args=args, train_dataset=train, processing_class=tokenizer,
            data_collator=None if data.is_lm else padding_collator(tokenizer), score_dataset=score_dataset,
        )  # fmt: skip
        quiet_trainer(trainer)
        trainer.train()
    model.eval()
    flops_after = count_flops(model, 1, max_length)
    record = copy.deepcopy(getattr(model.config, "hfprune", None) or {})
    plan = {
        **settings,
        "flops_per_sequence_before": flops_before,
        "flops_per_sequence_after": flops_after,
        "ideal_speedup": flops_before / flops_after if flops_after else None,
        "planned_on_untrained_head": not has_head,
        "stock_loadable": record.get("stock_loadable", True),  # the config alone describes the planned shapes
    }
    return PruneResult(
        output_dir=output_dir, base_model=source.display_name, task=data.name, metrics_before={}, metrics_after={},
        sparsity=sparsity_summary(model, base_parameters), finetuned_first=not has_head, settings=plan,
        pruning_history=[{"kept_layers": record.get("kept_layers"), "kept_heads": record.get("kept_heads")}], dry_run=True,
    )  # fmt: skip
