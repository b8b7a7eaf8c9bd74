"""Train a task head until a validation slice stops improving, and the Trainer arguments the jobs share.

A job prunes a model only once it solves the task, so a checkpoint without a trained head is fine-tuned here
first; the micro-batch split, checkpointing and memory release between stages are the same for every job.
"""

from __future__ import annotations

import ctypes
import gc
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..constants import PRECISIONS, PRUNE_DEFAULTS, choices
from ..distributed import on_main_process, process_count
from ..errors import PipelineInputError
from ..io.checkpoint import ModelSource, load_model_for_task
from ..io.rundir import FINETUNED_DIR, save_folder, save_state
from ..measure.speed import cuda_computes_bf16
from ..pruning_config import PruningConfig
from ..tasks.evaluate import make_compute_metrics
from ..tasks.task_data import TaskData, padding_collator, tokenize_split
from ..training.callbacks import progress_callbacks
from ..training.fsdp import FSDP_CONFIG
from ..training.trainer import PruningTrainer, loss_counts_items

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "FINETUNE_PATIENCE",
    "MAX_EVAL_INTERVAL",
    "MAX_MICRO_BATCH",
    "default_finetune_epochs",
    "micro_batches",
    "per_process_batch",
    "precision_of",
    "prepare_dense_model",
    "release_memory",
    "resolve_precision",
    "train_dense_control",
    "training_device",
    "validation_slice",
]


def quiet_trainer(trainer) -> None:
    """With a progress callback the Trainer's own tqdm bars and log printing only add noise."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)


MAX_MICRO_BATCH = 8  # examples per forward/backward on a CPU; larger batches accumulate gradients


def micro_batches(batch_size: int) -> tuple[int, int]:
    """`(micro_batch, accumulation_steps)` with micro_batch * steps == batch_size: micro-batches of at most 8
    (and at least 4) where the batch divides evenly into them, else the batch as it is (e.g. 17).

    Activations, not weights, dominate training memory for a model of MiniLM's size: a batch of 32 x 128
    tokens holds about 1 GB of them. Accumulating four micro-batches of 8 trains on the same examples with the
    same mean loss per update (dropout draws and float summation order differ) at a quarter of that; it took
    the peak of `prune_for_task` on MiniLM-L6 from 1.55 to 1.41 GB on the CPU (benchmarks/results/memory.json).
    """
    for steps in range(math.ceil(batch_size / MAX_MICRO_BATCH), batch_size + 1):
        if batch_size % steps == 0 and batch_size // steps >= 4:
            return batch_size // steps, steps
    return batch_size, 1


def per_process_batch(batch_size: int, processes: int | None = None) -> int:
    """The examples each of `processes` (default: this run's, `process_count`) trains on per update, so that the
    global batch is `batch_size` however many processes a `torchrun` starts; one line where it does not divide."""
    processes = process_count() if processes is None else processes
    if batch_size % processes:
        raise PipelineInputError(
            f"batch_size {batch_size} does not divide among {processes} processes; use a multiple of {processes}",
            cli_message=f"--batch-size {batch_size} does not divide among {processes} processes; use a multiple of {processes}",
        )
    return batch_size // processes


def training_device(device: str | None) -> str:
    """The kind of device the Trainer trains on ("cuda", "mps", "cpu"): `device`'s, or for None what accelerate
    picks (the CUDA GPU, else Apple's MPS, else the CPU)."""
    if device is not None:
        return torch.device(device).type
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str, device: str | None) -> str:
    """"fp32", "bf16" or "fp16": what the job trains in on `device`, with "auto" made concrete: bf16 on a CUDA GPU
    that computes it natively, else fp32 (the CPU, MPS, older GPUs). Checked in one line before any work: an
    unknown name, fp16 on the CPU (the Trainer refuses it at length) and bf16 on a GPU that only emulates it.

    "auto" never picks fp16: its 5-bit exponent overflows (inf, then NaN losses) where a model's activations pass
    65,504, which the grad scaler the Trainer adds cannot repair (it rescales gradients, not the forward pass);
    bf16 has fp32's range. On a V100 or T4, where fp16 is the fast path, it is there to ask for.
    """
    if precision not in PRECISIONS:
        raise PipelineInputError(f"precision must be {choices(PRECISIONS)}, got {precision!r}")
    kind = training_device(device)
    if precision == "auto":
        return "bf16" if kind == "cuda" and cuda_computes_bf16(device) else "fp32"
    if precision == "fp16" and kind == "cpu":
        raise PipelineInputError(
            "precision 'fp16' needs a GPU: train on the CPU in 'bf16' or 'fp32'",
            cli_message="--precision fp16 needs a GPU: train on the CPU with --precision bf16 or fp32",
        )
    if precision == "bf16" and kind == "cuda" and not cuda_computes_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise PipelineInputError(
            f"precision 'bf16': {name} does not compute bf16 natively (compute capability below 8.0); use 'fp16' or 'fp32'",
            cli_message=f"--precision bf16: {name} does not compute bf16 natively (compute capability below 8.0); use fp16 or fp32",
        )
    return precision


def precision_of(args: Any) -> str:
    """The precision a `TrainingArguments` trains in ("bf16", "fp16" or "fp32")."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def training_kwargs(
    output_dir: Path, *, batch_size: int, learning_rate: float, seed: int, quiet: bool, save_steps: int = 0,
    device: str | None = None, precision: str = PRUNE_DEFAULTS["precision"], fsdp: bool = PRUNE_DEFAULTS["fsdp"],
) -> dict[str, Any]:
    """Shared arguments; `save_steps > 0` checkpoints training every so many steps (for `resume=True`);
    `device="cpu"` trains on the CPU even where there is a GPU; `precision` as `resolve_precision`; `fsdp`: shard
    training across the processes (`hfprune.training.fsdp.FSDP_CONFIG`, for `PruningTrainer`, which gathers the
    model back between its phases) instead of DDP.

    On a CUDA GPU the batch trains whole (micro-batches would leave it idle), with `auto_find_batch_size`: on an
    out-of-memory error the Trainer (accelerate's `find_executable_batch_size`) restarts the training loop from
    its first step, on the weights the failed attempt already updated, with the per-device batch cut to
    int(0.9 x) (32, 28, 25, ...; not halved) until it fits. Gradient accumulation does not grow to make up for
    it: the effective batch shrinks at the same learning rate, with more steps per epoch, and later phases keep
    the smaller batch. Evaluation batches are not adjusted. On the CPU and MPS it trains in `micro_batches`,
    where that was measured to lower peak memory.

    Under `torchrun --nproc_per_node N` (or `accelerate launch`) `batch_size` stays the global batch: each process
    trains on `batch_size / N` per update (`per_process_batch`; refused in one line where it does not divide), in
    micro-batches on the CPU, and the Trainer's DDP averages the gradients. On the CPU `use_cpu` is set: without
    it, accelerate joins the process group but the Trainer trains alone in every process, on every example.
    """
    kind = training_device(device)
    precision = resolve_precision(precision, device)
    batch_size = per_process_batch(batch_size)
    micro_batch, accumulation = (batch_size, 1) if kind == "cuda" else micro_batches(batch_size)
    return dict(
        # on the CPU: gloo DDP under torchrun (see above), and the Trainer refuses bf16 on no GPU without it
        use_cpu=kind == "cpu",
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=micro_batch * 2,
        auto_find_batch_size=kind == "cuda",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        learning_rate=learning_rate,
        weight_decay=0.01,
        warmup_steps=0.06,
        seed=seed,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2 if save_steps else None,
        eval_strategy="no",
        report_to="none",
        logging_steps=50,
        disable_tqdm=quiet,
        dataloader_pin_memory=kind == "cuda",
        **({"fsdp": True, "fsdp_config": dict(FSDP_CONFIG)} if fsdp else {}),
    )


FINETUNE_PATIENCE = 3  # evaluations without a lower validation loss before fine-tuning stops
MAX_EVAL_INTERVAL = 500  # steps between evaluations on large training sets


def default_finetune_epochs(num_examples: int) -> float:
    """The most epochs a new task head trains for; early stopping usually ends it sooner.

    Small sets (RTE, MRPC, CoLA, a few thousand examples) need many passes before a fresh classifier learns
    anything: one epoch of 2,000 MRPC examples stays exactly at the majority class. Large sets converge in few.
    """
    return 10.0 if num_examples < 10_000 else 3.0


def validation_slice(train: Dataset, seed: int) -> tuple[Dataset, Dataset]:
    """Carve `(train, validation)` from the training set: 10% of it, 32 to 1,000 examples (at most a quarter).

    Choosing when to stop on a slice of train keeps the reported dev split untouched by every decision.
    """
    size = min(1000, max(32, len(train) // 10), len(train) // 4)
    if size < 1:
        return train, train.select([])
    parts = train.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _finetune(
    model, tokenizer, train: Dataset, validation: Dataset, data: TaskData, work_dir: Path, *, epochs: float, progress, **kwargs
):
    """Train a fresh task head (and the encoder) with a plain `Trainer` until the validation slice stops improving.

    Pruning scores and the "before" metrics only mean something for a model that solves the task. Training is
    evaluated on `validation` about once an epoch (at most every 500 steps), stops after three evaluations
    without a lower loss (smoother than accuracy on a few hundred examples), and ends on the best weights.
    """
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    steps_per_epoch = max(1, math.ceil(len(train) / kwargs["batch_size"]))
    interval = min(steps_per_epoch, MAX_EVAL_INTERVAL)
    settings = training_kwargs(work_dir / "finetune", quiet=progress is not None, **{**kwargs, "save_steps": interval})
    settings.update(
        eval_strategy="steps", eval_steps=interval, load_best_model_at_end=True, save_total_limit=2,
        metric_for_best_model="eval_loss", greater_is_better=False, warmup_steps=0.1,
    )  # fmt: skip
    args = TrainingArguments(num_train_epochs=epochs, **settings)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=padding_collator(tokenizer),
        compute_metrics=make_compute_metrics(data.spec),
        callbacks=[EarlyStoppingCallback(FINETUNE_PATIENCE), *progress_callbacks(progress, "fine-tune the task head")],
    )
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and loss_counts_items(model)
    if progress is not None:
        quiet_trainer(trainer)
    # rank 0 alone looks (and removes a half-written checkpoint); every rank resumes from what it found
    trainer.train(resume_from_checkpoint=on_main_process(lambda: _last_complete_checkpoint(Path(args.output_dir))))
    model.eval()
    summary = {"epochs": round(trainer.state.epoch or 0.0, 2), "steps": trainer.state.global_step, "best_validation": trainer.state.best_metric}
    del trainer
    release_memory()
    return summary


def prepare_dense_model(
    source: ModelSource,
    data: TaskData,
    work_dir: Path,
    state: dict[str, Any],
    *,
    finetune_epochs: float | None,
    max_length: int,
    progress,
    say: Callable[[str], None],
    **training: Any,
) -> tuple[Any, Any, Dataset]:
    """`(model, tokenizer, train)`: the model to prune, solving the task, and the examples later stages train on.

    A checkpoint with a trained head for the task is used as it is. One without gets a head fine-tuned first (at
    most `finetune_epochs`, default `default_finetune_epochs`), with early stopping on a validation slice of train
    that is then left out of `train`, so no later step trains on what chose when to stop. The fine-tuned model is
    kept in `work_dir` and `state["finetuned_first"]` records the choice, so a resumed run reloads it (written by
    rank 0 alone under `torchrun`; the Trainer's DDP leaves every rank with the same weights).
    `training`: `batch_size`, `learning_rate`, `seed`, `device` and `precision`.
    """
    from transformers import set_seed

    set_seed(training["seed"])
    finetuned = work_dir / FINETUNED_DIR
    if state.get("finetuned_first") and finetuned.is_dir():
        say(f"resuming from the fine-tuned model in {finetuned}")
        model, tokenizer, _ = load_model_for_task(str(finetuned), data)
    else:
        say(f"loading {source.display_name} for {data.name} ({data.source})")
        model, tokenizer, has_head = load_model_for_task(source, data)
        state["finetuned_first"] = not has_head
    train = tokenize_split(data, data.train, tokenizer, max_length)
    if not state["finetuned_first"]:
        return model, tokenizer, train
    train, validation = validation_slice(train, training["seed"])
    if not finetuned.is_dir():
        epochs = finetune_epochs if finetune_epochs is not None else default_finetune_epochs(len(train))
        say(
            f"{source.display_name} has no trained {data.name} head: fine-tuning it first (at most {epochs:g} epochs "
            f"on {len(train)} examples, early stopping on {len(validation)} held-out training examples)"
        )
        state["finetune"] = _finetune(model, tokenizer, train, validation, data, work_dir, epochs=epochs, progress=progress, **training)

        def keep() -> None:  # for a resume; under torchrun every rank keeps its own identical copy in memory
            save_folder(finetuned, model, tokenizer)
            save_state(work_dir, state)

        on_main_process(keep)
    return model, tokenizer, train


def train_dense_control(
    dense: Any,
    source: ModelSource,
    data: TaskData,
    work_dir: Path,
    state: dict[str, Any],
    train: Dataset,
    pruning_args: Any,
    *,
    tokenizer: Any,
    evaluate: Callable[..., dict],
    pruned_steps: int,
    pruning_steps: int | None = None,
    progress,
) -> dict[str, Any]:
    """The honest "before": the dense model trained on the same examples, for as many epochs, at the same learning
    rate and batch size as the pruned model's training phases, with nothing pruned and no distillation.

    Without it, a pruned model that trained longer than the dense one can look better than dense for having
    seen more data. `dense` is a copy to train in place (the distillation teacher, no longer needed), or None to
    reload the dense model from the run's fine-tuned folder or `source`. `pruning_steps`: how many pruning steps the
    pruned model went through (default: the arguments' count; a speed target or max_drop can run more or fewer).
    Under `torchrun` every rank trains (DDP) and calls `evaluate`, which the job runs on rank 0 alone.
    Returns the run's `dense_control` entry.
    """
    if dense is None:
        finetuned = work_dir / FINETUNED_DIR
        dense, _, _ = load_model_for_task(str(finetuned) if state.get("finetuned_first") else source, data)
    dense.train().requires_grad_(True)  # a distillation teacher was frozen
    args = pruning_args
    pruning_steps = args.num_pruning_steps if pruning_steps is None else pruning_steps
    epochs = args.recovery_epochs * pruning_steps + (args.l0_epochs if args.pruning_method == "l0" else 0)
    settings = training_kwargs(
        work_dir / "control", batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        learning_rate=args.learning_rate, seed=args.seed, quiet=progress is not None, device="cpu" if args.use_cpu else None,
        precision=precision_of(args), fsdp=bool(args.fsdp),
    )  # fmt: skip
    trainer = PruningTrainer(
        model=dense, args=PruningConfig(recovery_epochs=epochs, **settings), train_dataset=train, processing_class=tokenizer,
        data_collator=None if data.is_lm else padding_collator(tokenizer), callbacks=progress_callbacks(progress, "train the dense control"),
    )  # fmt: skip
    if progress is not None:
        quiet_trainer(trainer)
    steps = trainer.train().global_step
    dense = trainer.model  # under FSDP, a new module: the whole model gathered back after training
    del trainer
    release_memory()
    return {
        "metrics": evaluate(dense.eval(), stage="evaluate dense control"),
        "steps": steps,
        "pruned_steps": pruned_steps,
        "protocol": f"the dense model trained on the same {len(train):,} examples for {epochs:g} epochs ({steps:,} steps; "
        f"the pruned model trained {pruned_steps:,}) at the same learning rate and batch size, without pruning"
        + (" or distillation" if args.distills else ""),
    }


def release_memory() -> None:
    """Free what a finished stage left behind before the next one allocates.

    A `Trainer` sits in reference cycles (its callbacks point back at it), so without a collection its optimizer
    state, twice the model's size, lives on into the next stage; and glibc keeps freed heap pages until trimmed.
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


def _last_complete_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-N` that was written to the end; a half-written one (killed, or a full disk) is removed."""
    if not folder.is_dir():
        return None
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda path: int(path.name.rpartition("-")[2] or 0), reverse=True):
        if (checkpoint / "trainer_state.json").is_file():
            return str(checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None
