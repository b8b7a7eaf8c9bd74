"""`prune_for_task(..., stream=True)` (`hfprune prune MODEL --task lm --params p --stream`): a causal LM pruned
to a parameter budget with one layer in memory at a time, and no training.

The stages, each reading the checkpoint's safetensors files one layer at a time (`hfprune.streaming`): the dense
model's perplexity; forward-only scores on training blocks (`stream_scores`); the plan to the budget from those
scores alone (`plan_parameter_budget`: the layers and KV groups asked for, then one FFN width for every layer);
the pruned checkpoint cut tensor by tensor (`prune_checkpoint`); with `reconstruct`, its kept units refitted to
the dense model's residual stream on the same training blocks (`stream_reconstruct`); its perplexity. The output folder (checkpoint,
tokenizer, card, `hfprune_results.json`) is moved into place whole at the end; with `gguf_dtype`, the finished
checkpoint is then written to `model-<dtype>.gguf` in it (`stream_export_gguf`, checked in llama.cpp), as the
in-memory job does. Peak memory is one layer, the
embeddings and head, and the calibration batches' hidden states (`max_memory` of them in memory, the rest on
disk), whatever the model's size.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psutil
import torch
from datasets import Dataset
from huggingface_hub import snapshot_download
from torch.utils.data import DataLoader

from .._validation import check_device
from ..constants import RESULTS_FILE
from ..distributed import process_count
from ..errors import PipelineInputError, PruningError, first_line
from ..export.card import write_model_card
from ..export.card_source import prune_card_inputs
from ..io.checkpoint import ModelSource, load_tokenizer, resolve_model
from ..io.loading import model_class_of
from ..io.output import check_output_dir, job_inputs, write_atomically
from ..io.rundir import jsonable
from ..io.skeleton import checkpoint_skeleton
from ..measure.sparsity import num_parameters, sparsity_summary
from ..planning.streamed_budget import plan_parameter_budget
from ..streaming.gguf import stream_export_gguf
from ..streaming.layers import DEFAULT_MAX_MEMORY
from ..streaming.perplexity import streamed_perplexity
from ..streaming.reconstruct import stream_reconstruct
from ..streaming.scores import stream_scores
from ..streaming.surgery import prune_checkpoint
from ..tasks.specs import LM_TASK
from ..tasks.task_data import TaskData, load_task_data, tokenize_split
from .finetune import training_device
from .llama_cpp_bench import check_gguf_job, gguf_into_checkpoint
from .prune_arguments import ModelDataArguments, OutputArguments, RecoveryArguments, TargetArguments
from .results import PruneResult, Stopwatch

STREAM_BATCH_SIZE = 8
"""Blocks per batch while streaming (each layer runs once over all of them)."""
SNAPSHOT_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
"""What a streamed job downloads of a Hub model: its config, safetensors weights and tokenizer."""
STREAM_SHARD_SIZE = "500MB"
"""Output shards of a streamed job: each is built in memory before it is written, so this bounds the memory."""
PROTOCOL = (
    "no training: forward-only scores on training blocks, the plan from those scores alone, the dense model as given; "
    "perplexity on the eval split, one layer in memory at a time"
)


def check_stream_job(model_data: ModelDataArguments, targets: TargetArguments, recovery: RecoveryArguments, output: OutputArguments) -> None:
    """Refuse, in one line and before anything is read, what a streamed job cannot do."""
    if model_data.task.lower() != LM_TASK:
        raise PipelineInputError(f"stream prunes causal language models (--task {LM_TASK}), not {model_data.task}")
    if targets.param_budget is None:
        raise PipelineInputError("stream plans to a parameter budget: give param_budget (--params)")
    if process_count() > 1:
        raise PipelineInputError("stream runs as one process (one layer at a time); launch it without torchrun")
    unsupported = {
        "target_speedup": targets.target_speedup, "max_drop": targets.max_drop, "prune_width": targets.prune_width or None,
        "dry_run": output.dry_run or None, "resume": output.resume or None, "gguf_file": model_data.gguf_file,
        "fsdp": recovery.fsdp or None,  # it trains nothing to shard
        "reconstruct_method='bias'": True if recovery.reconstruct and recovery.reconstruct_method == "bias" else None,  # it adds tensors
    }  # fmt: skip
    given = [name for name, value in unsupported.items() if value is not None]
    if given:
        raise PipelineInputError(f"stream does not support {', '.join(given)} yet; leave it out, or run without stream")


def weight_bytes(source: ModelSource) -> int:
    """Bytes the model's weights take once loaded: its parameters (a local checkpoint's pruned shapes; a Hub model's
    from its config, built on the meta device) in the dtype it loads in (a GGUF file dequantised to fp32)."""
    if source.is_local and not source.gguf_file:
        model = checkpoint_skeleton(source.name_or_path)
    else:
        with torch.device("meta"):
            model = model_class_of(source.config)(copy.deepcopy(source.config))
    dtype = torch.float32 if source.gguf_file else getattr(source.config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return num_parameters(model) * torch.tensor([], dtype=dtype).element_size()


def check_fits_in_memory(source: ModelSource, available: int | None = None) -> None:
    """Refuse, in one line before anything loads, a model whose weights alone exceed the memory free now
    (`available` bytes; psutil's count by default), pointing to the streamed job, which needs one layer at a time."""
    available = psutil.virtual_memory().available if available is None else available
    needed = weight_bytes(source)
    if needed > available:
        problem = f"{source.display_name}'s weights take {needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of memory free"
        raise PipelineInputError(
            f"{problem}: prune it one layer at a time with stream=True (task {LM_TASK!r} with a param_budget)",
            cli_message=f"{problem}: prune it one layer at a time with --stream (--task {LM_TASK} with --params)",
        )


def local_snapshot(source: ModelSource) -> Path:
    """The folder whose safetensors files are streamed: the local folder, or the Hub model's files in the cache
    (downloaded once, weights, config and tokenizer only)."""
    if source.is_local:
        return Path(source.name_or_path)
    try:
        return Path(snapshot_download(source.name_or_path, allow_patterns=SNAPSHOT_FILES))
    except (OSError, ValueError) as error:
        raise PipelineInputError(f"cannot download {source.name_or_path} to stream it ({first_line(error)})") from None


def _blocks(data: TaskData, tokenizer: Any, model_data: ModelDataArguments, num_examples: int) -> tuple[Dataset, dict[str, Dataset]]:
    """The calibration blocks (a seeded choice of `num_examples` training blocks, as the in-memory job scores on)
    and every eval split's blocks."""
    train = tokenize_split(data, data.train, tokenizer, model_data.max_length)
    calibration = train.shuffle(seed=model_data.seed + 1).select(range(min(num_examples, len(train))))
    evaluation = {split: tokenize_split(data, texts, tokenizer, model_data.max_length) for split, texts in data.eval.items()}
    return calibration, evaluation


def stream_prune_job(
    model_data: ModelDataArguments, targets: TargetArguments, recovery: RecoveryArguments, output: OutputArguments
) -> PruneResult:
    """Run the streamed job (see the module notes) and return its `PruneResult`."""
    check_stream_job(model_data, targets, recovery, output)
    say = output.log or (lambda message: None)
    device = check_device(recovery.device, error=PipelineInputError) or training_device(None)
    inputs = job_inputs(model_data.model_name_or_path, data_kwargs=vars(model_data))
    output_dir = check_output_dir(output.output_dir, output.overwrite, inputs=inputs)
    stopwatch = Stopwatch()
    source = resolve_model(model_data.model_name_or_path, causal_lm=True)
    if output.gguf_dtype is not None:
        check_gguf_job(output.gguf_dtype, source.config, True, source.display_name)
    model_dir = local_snapshot(source)
    data = load_task_data(model_data.task, **model_data.data_kwargs())
    tokenizer = load_tokenizer(source)
    calibration, evaluation = _blocks(data, tokenizer, model_data, targets.score_num_examples)
    loader = functools.partial(DataLoader, batch_size=STREAM_BATCH_SIZE)
    stream = {"device": device, "max_memory": DEFAULT_MAX_MEMORY, "progress": output.progress}
    stopwatch.lap("load data")

    say(f"dense perplexity of {source.display_name}, one layer at a time")
    before = {split: {"perplexity": streamed_perplexity(model_dir, loader(blocks), **stream)} for split, blocks in evaluation.items()}
    stopwatch.lap("evaluate before")
    kinds = ["ffn"] + (["heads"] if targets.head_sparsity else []) + (["layer_cosine"] if targets.layer_sparsity else [])
    say(f"scoring {', '.join(kinds)} on {len(calibration)} training blocks, one layer at a time")
    scores = stream_scores(model_dir, loader(calibration), kinds, **stream)
    stopwatch.lap("score")
    skeleton = checkpoint_skeleton(model_dir)
    try:
        plan = plan_parameter_budget(
            skeleton, scores, targets.param_budget, head_sparsity=targets.head_sparsity or 0.0,
            layer_sparsity=targets.layer_sparsity, round_to_multiple=targets.round_to_multiple,
        )  # fmt: skip
    except PruningError as error:
        raise PipelineInputError(first_line(error)) from None
    stopwatch.lap("plan")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.stream-{os.getpid()}-", dir=output_dir.parent))
    try:
        say("cutting the checkpoint tensor by tensor")
        pruned_dir = staging / "model"
        prune_checkpoint(model_dir, plan, pruned_dir, max_shard_size=STREAM_SHARD_SIZE)
        stopwatch.lap("prune")
        reconstruction = None
        if recovery.reconstruct:
            say(f"reconstructing ({recovery.reconstruct_method}) on the training blocks, one layer at a time")
            report = stream_reconstruct(pruned_dir, model_dir, loader(calibration), method=recovery.reconstruct_method, **stream)
            reconstruction = [report.to_dict()]
            stopwatch.lap("reconstruct")
        say("pruned perplexity, one layer at a time")
        after = {split: {"perplexity": streamed_perplexity(pruned_dir, loader(blocks), **stream)} for split, blocks in evaluation.items()}
        stopwatch.lap("evaluate after")
        pruned = checkpoint_skeleton(pruned_dir)
        settings = {
            "stream": True, "param_budget": targets.param_budget, "head_sparsity": targets.head_sparsity or 0.0,
            "layer_sparsity": targets.layer_sparsity, "round_to_multiple": targets.round_to_multiple,
            "score_num_examples": len(calibration), "max_length": model_data.max_length, "seed": model_data.seed,
            "method": "activation", "schedule": "one_shot", "recovery_epochs": 0.0, "protocol": PROTOCOL,
            "reconstruct": recovery.reconstruct, "reconstruct_method": recovery.reconstruct_method if recovery.reconstruct else None,
        }  # fmt: skip
        result = PruneResult(
            output_dir=output_dir, base_model=source.display_name, task=data.name, metrics_before=before,
            metrics_after=after, sparsity=sparsity_summary(pruned, plan["dense_parameters"]), finetuned_first=False,
            settings=settings, timings=stopwatch.timings, reconstruction=reconstruction,
            param_target={
                "target_param_budget": targets.param_budget, "dense_parameters": plan["dense_parameters"],
                "parameters": num_parameters(pruned), "kept_fraction": num_parameters(pruned) / plan["dense_parameters"],
                "ffn_width": plan["ffn_width"], "layers_dropped": plan["layers"], "method": "stream", "prune_width": False,
            },
        )  # fmt: skip
        card_kwargs = prune_card_inputs(
            result, base_model=model_data.model_name_or_path, base_model_id=output.base_model_id,
            repo_id=output.repo_id or output_dir.name, task_name=data.name, base_num_parameters=plan["dense_parameters"],
            command=output.command or f"hfprune.prune_for_task({source.display_name!r}, 'lm', param_budget={targets.param_budget}, stream=True)",
        )  # fmt: skip

        def write(folder: Path) -> None:
            for path in pruned_dir.iterdir():  # the same file system: moved, not copied
                path.rename(folder / path.name)
            tokenizer.save_pretrained(folder)
            results = {**result.to_dict(), "output_dir": output_dir.name, "card": card_kwargs}
            (folder / RESULTS_FILE).write_text(json.dumps(jsonable(results), indent=2) + "\n")
            write_model_card(pruned, folder, **{**card_kwargs, "task": data.card_task})

        say(f"writing {output_dir}")
        write_atomically(output_dir, write, overwrite=output.overwrite, inputs=inputs)
        stopwatch.lap("write")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if output.gguf_dtype is not None:
        say(f"writing the {output.gguf_dtype} GGUF for llama.cpp, one layer at a time")
        export = functools.partial(
            stream_export_gguf, output_dir, dtype=output.gguf_dtype, tokenizer=tokenizer, overwrite=True, device=device
        )  # fmt: skip
        result.gguf = gguf_into_checkpoint(export, output_dir, output.gguf_dtype)
        stopwatch.lap("gguf")
    return result


__all__ = [
    "PROTOCOL", "SNAPSHOT_FILES", "STREAM_BATCH_SIZE", "STREAM_SHARD_SIZE", "check_fits_in_memory", "check_stream_job", "local_snapshot", "stream_prune_job", "weight_bytes",
]  # fmt: skip

