"""hfprune: structured pruning of attention heads, FFN neurons and layers for Hugging Face transformers 5.

The public API is imported lazily (PEP 562), as transformers does: `import hfprune` costs nothing until a
name is used, so `hfprune --help`, `--version` and bad-input errors answer without importing torch.

The package is built in floors; each subpackage imports only those below it:

    jobs/      the jobs behind the CLI (prune_for_task, drop_layers_for_task, benchmark_checkpoint, score_task)
    streaming/ models larger than memory: scores, reconstruction, surgery, perplexity and GGUF one layer at a time
    training/  PruningTrainer, callbacks, L0 gates, distillation
    export/    model cards, Hub push, ONNX, transformers-4 conversion
    io/        from_pretrained for pruned checkpoints, model sources, atomic output folders, resume state
    planning/  which units go: plans, time and parameter budgets
    reconstruction/  refitting what was kept, layer by layer, to match the dense model (reconstruct)
    tasks/     task data, metrics, evaluation, baselines
    scoring/   importance scores          measure/  FLOPs, speed, latency model
    engine/    adapters, masks, record, surgery
    constants, errors, _validation, progress, pruning_config, distributed
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from ._lazy import attach
from .constants import __version__  # noqa: F401  (imports nothing: `import hfprune` stays cheap)

# submodule -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {
    "errors": ("PipelineInputError", "PruningError", "TargetOutOfReachError", "WeakBaselineError"),
    "pruning_config": ("PruningArguments", "PruningConfig"),
    "engine.apply_plan": ("apply_plan",),
    "engine.arch": ("ArchAdapter", "get_adapter", "register_adapter", "supported_model_types"),
    "engine.hidden": ("prune_hidden",),
    "engine.masks": ("MaskHandle", "apply_masks", "make_ffn_mask", "make_head_mask", "make_layer_mask", "skip_layers"),
    "engine.record": ("get_record",),
    "engine.structure": ("EmptyAttention",),
    "engine.surgery": ("drop_layers", "prune_ffn", "prune_heads"),
    "scoring.activations": (
        "activation_ffn_scores",
        "activation_head_scores",
        "activation_kv_group_scores",
        "activation_scores",
        "hidden_importance",
    ),
    "scoring.loss": (
        "ffn_importance",
        "head_ablation_scores",
        "head_importance",
        "importance_scores",
        "layer_ablation_scores",
        "mlp_importance",
        "taylor_head_scores",
    ),
    "scoring.methods": ("score_units",),
    "scoring.similarity": ("angular_distance", "block_influence", "layer_cosine_scores"),
    "scoring.weights": ("magnitude_ffn_scores", "magnitude_head_scores", "random_ffn_scores", "random_head_scores"),
    "measure.flops": ("count_flops",),
    "measure.generation_speed": ("measure_generation_speed",),
    "measure.llama_cpp_speed": ("LlamaCppSpeedReport", "measure_llama_cpp_speed"),
    "measure.latency": ("LatencyModel", "measure_latency_model"),
    "measure.speed": ("measure_speed",),
    "measure.speed_report": ("SpeedReport",),
    "planning.allocation": ("allocate_for_time",),
    "planning.plan": (
        "best_head_per_layer",
        "ffn_to_prune",
        "head_sparsity",
        "heads_to_prune",
        "iterative_head_pruning",
        "layers_to_drop",
    ),
    "reconstruction.sequential": ("BlockFit", "ReconstructionReport", "reconstruct"),
    "io.loading": ("from_pretrained", "save_for_remote_code"),
    "export.card": ("write_model_card",),
    "export.convert": ("convert_checkpoint",),
    "export.gguf": ("GgufExport", "export_gguf"),
    "export.gguf_check": ("GgufMismatchError",),
    "export.hub": ("HubPushError", "push_to_hub"),
    "export.onnx": ("OnnxExport", "export_onnx"),
    "planning.streamed_budget": ("plan_parameter_budget",),
    "streaming.gguf": ("stream_export_gguf",),
    "streaming.layers": ("StreamedCheckpoint",),
    "streaming.perplexity": ("streamed_perplexity",),
    "streaming.reconstruct": ("stream_reconstruct",),
    "streaming.scores": ("stream_scores",),
    "streaming.surgery": ("prune_checkpoint",),
    "training.callbacks": ("HeadMaskCallback", "LayerDropCallback"),
    "training.gates": ("HeadGates",),
    "training.trainer": ("PruningTrainer",),
    "constants": ("SPEED_TARGET_RECIPE",),
    "jobs.llama_cpp_bench": ("benchmark_llama_cpp",),
    "jobs.prune": ("prune_for_task",),
    "jobs.results": ("PruneResult",),
}

# The module paths before the package had subpackages -> where their names live now (the first module that
# has a name wins). A path with one home imports as that very module, so `monkeypatch.setattr` still works.
OLD_MODULE_PATHS: dict[str, tuple[str, ...]] = {
    "activations": ("scoring.activations",),
    "allocation": ("planning.allocation",),
    "arch": ("engine.arch",),
    "arch.base": ("engine.arch.base",),
    "arch.bert": ("engine.arch.bert",),
    "arch.distilbert": ("engine.arch.distilbert",),
    "arch.gpt2": ("engine.arch.gpt2",),
    "arch.llama": ("engine.arch.llama",),
    "arch.xlnet": ("engine.arch.xlnet",),
    "baselines": ("tasks.baselines",),
    "callbacks": ("training.callbacks", "progress"),
    "card": (
        "export.card",
        "export.card_source",
        "export.card_sections",
        "export.plots",
        "measure.sparsity",
        "engine.record",
    ),
    "checkpoint": ("io.checkpoint",),
    "checks": ("engine.checks",),
    "convert": ("export.convert", "io.v4"),
    "demo": ("jobs.demo",),
    "distill": ("training.distill",),
    "dry_run": ("jobs.dry_run",),
    "finetune": ("jobs.finetune",),
    "gates": ("training.gates",),
    "generation_speed": ("measure.generation_speed",),
    "hidden": ("engine.hidden",),
    "hub": ("export.hub",),
    "latency": ("measure.latency",),
    "loading": ("io.loading",),
    "masks": ("engine.masks",),
    "max_drop": ("jobs.max_drop",),
    "metrics": ("tasks.metrics",),
    "onnx_export": ("export.onnx",),
    "output": ("io.output",),
    "param_target": ("planning.param_target",),
    "per_layer": ("engine.per_layer", "io.per_layer_load"),
    "pipeline": (
        "jobs.prune",
        "jobs.finetune",
        "jobs.results",
        "jobs.score",
        "io.rundir",
        "tasks.task_data",
        "tasks.evaluate",
        "tasks.specs",
        "jobs.prune_arguments",
        "constants",
        "errors",
    ),
    "plan": ("planning.plan",),
    "record": ("engine.record",),
    "results": ("jobs.results",),
    "rundir": ("io.rundir",),
    "score_job": ("jobs.score",),
    "scores": ("scoring.loss", "scoring.common", "scoring.methods", "scoring.similarity", "scoring.weights"),
    "speed": ("measure.speed", "measure.flops", "measure.noise", "measure.speed_report"),
    "speed_target": ("planning.speed_target",),
    "structure": ("engine.structure",),
    "surgery": ("engine.surgery", "engine.restore"),
    "trainer": ("training.trainer",),
    "transaction": ("engine.transaction",),
}

__getattr_export__, _dir, __all__ = attach(__name__, _EXPORTS)


SUBPACKAGES = ("engine", "scoring", "measure", "tasks", "planning", "reconstruction", "io", "export", "training", "streaming", "jobs")


def __getattr__(name: str) -> Any:
    if name in OLD_MODULE_PATHS or name in SUBPACKAGES:  # `hfprune.pipeline`, `hfprune.jobs` as attributes
        return importlib.import_module(f"{__name__}.{name}")
    return __getattr_export__(name)


def __dir__() -> list[str]:
    return _dir()


class _MergedModule(types.ModuleType):
    """An old module path whose names now live in several modules: each name is read from the first that has it."""

    def __init__(self, name: str, homes: tuple[str, ...]):
        super().__init__(name, f"Old import path; its names now live in {', '.join(homes)}.")
        self._homes = homes

    def __getattr__(self, name: str) -> Any:
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `hfprune.<old path>` from `OLD_MODULE_PATHS`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        old = fullname.removeprefix(f"{__name__}.")
        if fullname.startswith(f"{__name__}.") and old in OLD_MODULE_PATHS:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        homes = tuple(f"{__name__}.{home}" for home in OLD_MODULE_PATHS[spec.name.removeprefix(f"{__name__}.")])
        if len(homes) > 1:
            return _MergedModule(spec.name, homes)
        module = importlib.import_module(homes[0])
        self._spec = module.__spec__  # the import system stamps the old path's spec on the module: undone below
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if not isinstance(module, _MergedModule):
            module.__spec__ = self._spec


if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _OldPathFinder())  # before the path finder, which would load a second copy


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .engine.arch import ArchAdapter, get_adapter, register_adapter, supported_model_types
    from .engine.hidden import prune_hidden
    from .engine.masks import MaskHandle, apply_masks, make_ffn_mask, make_head_mask, make_layer_mask, skip_layers
    from .engine.record import get_record
    from .engine.structure import EmptyAttention
    from .engine.surgery import drop_layers, prune_ffn, prune_heads
    from .errors import PipelineInputError, PruningError, TargetOutOfReachError, WeakBaselineError
    from .export.card import write_model_card
    from .export.convert import convert_checkpoint
    from .export.gguf import GgufExport, export_gguf
    from .export.gguf_check import GgufMismatchError
    from .export.hub import HubPushError, push_to_hub
    from .export.onnx import OnnxExport, export_onnx
    from .io.loading import from_pretrained, save_for_remote_code
    from .constants import SPEED_TARGET_RECIPE
    from .jobs.prune import prune_for_task
    from .jobs.results import PruneResult
    from .measure.flops import count_flops
    from .measure.generation_speed import measure_generation_speed
    from .measure.latency import LatencyModel, measure_latency_model
    from .measure.speed import measure_speed
    from .measure.speed_report import SpeedReport
    from .planning.allocation import allocate_for_time
    from .planning.plan import (
        best_head_per_layer,
        ffn_to_prune,
        head_sparsity,
        heads_to_prune,
        iterative_head_pruning,
        layers_to_drop,
    )
    from .pruning_config import PruningArguments, PruningConfig
    from .reconstruction.sequential import BlockFit, ReconstructionReport, reconstruct
    from .scoring.activations import (
        activation_ffn_scores,
        activation_head_scores,
        activation_kv_group_scores,
        activation_scores,
        hidden_importance,
    )
    from .scoring.loss import (
        ffn_importance,
        head_ablation_scores,
        head_importance,
        importance_scores,
        layer_ablation_scores,
        mlp_importance,
        taylor_head_scores,
    )
    from .scoring.methods import score_units
    from .scoring.similarity import angular_distance, block_influence, layer_cosine_scores
    from .scoring.weights import magnitude_ffn_scores, magnitude_head_scores, random_ffn_scores, random_head_scores
    from .training.callbacks import HeadMaskCallback, LayerDropCallback
    from .training.gates import HeadGates
    from .training.trainer import PruningTrainer
