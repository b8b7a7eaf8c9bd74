"""`transformers.Trainer` callbacks: head masks at evaluation time, and LayerDrop during training.

They plug into a stock `Trainer(..., callbacks=[...])` and change neither the optimizer nor the data.

* `HeadMaskCallback` evaluates and predicts with some heads masked while training sees the full model.
* `LayerDropCallback` is LayerDrop (Fan et al. 2020, "Reducing Transformer Depth on Demand with Structured
  Dropout"): whole layers are skipped at random in training steps, so that any depth can be kept at
  inference time (`hfprune.drop_layers`) without fine-tuning again.
* `StageProgressCallback` reports training steps to a job's `progress(stage, done, total)`, which is how the
  CLI draws its bars.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.training_args import ParallelMode

from .._validation import check_fraction, is_integer
from ..engine.arch import get_adapter
from ..engine.checks import check_indices, check_mapping
from ..engine.masks import MaskHandle, apply_masks, make_head_mask
from ..engine.record import get_record
from ..errors import PruningError
from ..progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["HeadMaskCallback", "LayerDropCallback", "StageProgressCallback", "progress_callbacks"]



# ---- head masks at evaluation time ---------------------------------------------------------------------


class HeadMaskCallback(TrainerCallback):
    """Mask attention heads while the Trainer evaluates or predicts; training sees every head.

    `Trainer` has no "evaluation begins" event, so the mask hooks are registered once, when the Trainer is
    built (`on_init_end`; `on_train_begin` for a callback added later or a `model_init` Trainer), with
    `apply_masks(..., eval_only=True)`: in train mode they leave every activation untouched, so neither the
    loss nor the gradients change. They therefore also mask `trainer.evaluate()` / `trainer.predict()` after
    `train()`. Call `remove()` when done with the Trainer: the model then has no hooks left. The mask is in
    original indices and follows surgery made while it is attached (`PruningTrainer`'s pruning steps): evaluation
    after a step masks the same original heads, and a masked head that was pruned is simply gone.

    Args:
        heads_to_mask: `{layer: [heads]}` in original indices, or a `[num_layers, num_heads]` mask
            (0 masks a head, 1 keeps it) as built by `hfprune.make_head_mask`.
    """

    def __init__(self, heads_to_mask: Mapping[int, Iterable[int]] | torch.Tensor):
        if isinstance(heads_to_mask, torch.Tensor):
            self.head_mask: torch.Tensor | None = heads_to_mask.detach()
            self.heads_to_mask: dict[int, list[int]] | None = None
        elif isinstance(heads_to_mask, Mapping):
            self.head_mask, self.heads_to_mask = None, {int(k): list(v) for k, v in heads_to_mask.items()}
        else:
            raise PruningError(
                f"heads_to_mask must be a dict {{layer: [heads]}} or a torch.Tensor, got {type(heads_to_mask).__name__}"
            )
        self._handle: MaskHandle | None = None
        self._model: nn.Module | None = None

    @property
    def attached(self) -> bool:
        """Whether the mask hooks are on a model."""
        return self._handle is not None

    def attach(self, model: nn.Module) -> None:
        """Register the (evaluation-only) mask hooks on `model`; a no-op if already attached to it."""
        if self._handle is not None:
            if self._model is model:
                return
            self.remove()
        original = get_record(model)["original"]
        if self.head_mask is None:
            checked = check_mapping("heads_to_mask", self.heads_to_mask, original["num_layers"], original["num_heads"])
            mask = make_head_mask(model, checked)
        else:
            mask = self.head_mask
        self._handle = apply_masks(model, head_mask=mask, eval_only=True)
        self._model = model

    def remove(self) -> None:
        """Take the hooks off the model (evaluation is unmasked again)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._model = None, None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.attach(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.attach(model)

    def on_prediction_step(self, args, state, control, model=None, **kwargs):
        # Runs after each evaluation batch: too late to mask it, but not too late to refuse a wrong result.
        if self._handle is None or (model is not None and self._model is not model):
            raise PruningError(
                "HeadMaskCallback was not attached before this evaluation: pass it in Trainer(callbacks=[...]) "
                "or call callback.attach(trainer.model) first"
            )


# ---- LayerDrop -----------------------------------------------------------------------------------------


def _distributed(args) -> bool:
    return getattr(args, "parallel_mode", None) == ParallelMode.DISTRIBUTED or getattr(args, "world_size", 1) > 1


def _find_unused_parameters(args, model: nn.Module) -> bool:
    """The `find_unused_parameters` Trainer will give DDP (same rule as `Trainer._build_accelerator_args`)."""
    if getattr(args, "ddp_find_unused_parameters", None) is not None:
        return bool(args.ddp_find_unused_parameters)
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not (
        checkpointing
        or getattr(args, "activation_checkpointing", False)
        or getattr(args, "gradient_checkpointing", False)
    )


class LayerDropCallback(TrainerCallback):
    """LayerDrop (Fan et al. 2020): skip whole layers at random in training steps, never in evaluation.

    Each layer is dropped with probability `p`, independently, once per optimizer step: with gradient
    accumulation every micro-batch of a step skips the same layers. The draw happens outside the model
    (`on_step_begin`) from a generator seeded with `(seed, global_step)`, so every DDP rank skips the same
    layers and `torch.compile` sees a structural change (it guards on it and recompiles) instead of a
    Python random branch inside a compiled forward. A skipped layer is really not computed: its
    `nn.ModuleList` is replaced by the kept subset for the forward of each micro-batch and put back right
    after it (also when the forward raises), so backward, optimizer, evaluation and checkpoints always see
    the whole model. Skipped layers get no gradient in that step. While layers are skipped, `layer_idx` and
    `config.layer_types` are renumbered as `drop_layers` does, so decoders that build a cache still run.
    A `compute_loss` that calls the model twice per micro-batch sees the skip in its first call only.

    Under DDP, parameters of skipped layers are unused: set `TrainingArguments(ddp_find_unused_parameters=True)`.

    Args:
        p: drop probability of each layer in each step, in [0, 1).
        seed: seed of the per-step draws; `None` uses `TrainingArguments.seed`.
        layers: original layer ids that may be dropped (default: all).
    """

    def __init__(self, p: float = 0.2, seed: int | None = None, layers: Iterable[int] | None = None):
        self.p = check_fraction("LayerDrop probability p", p)
        if seed is not None and not is_integer(seed):
            raise PruningError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self.layers = None if layers is None else check_indices("layers", layers, 1 << 31)
        self.dropped_layers: list[int] = []  # original ids dropped in the latest step
        self.history: list[tuple[int, list[int]]] = []  # (global_step, dropped original ids) of every step
        self._model: nn.Module | None = None
        self._layers: nn.ModuleList | None = None
        self._layer_types: list | None = None
        self._indexed: list[list[tuple[nn.Module, int]]] = []  # per position: (module, its layer_idx)
        self._candidates: list[int] = []  # positions in `_layers` that may be dropped
        self._kept_ids: list[int] = []  # original id of each position
        self._drop: list[int] = []  # positions dropped in the current step
        self._installed = False
        self._hook = None
        self._seed = seed

    # ---- the draw -----------------------------------------------------------------------------------
    def draw(self, step: int) -> list[int]:
        """Original ids of the layers dropped at optimizer step `step`; the same on every rank and rerun."""
        if not self._kept_ids:
            raise PruningError("LayerDropCallback.draw needs the model: it is set up by on_train_begin")
        return [self._kept_ids[position] for position in self._draw_positions(step)]

    def _draw_positions(self, step: int) -> list[int]:
        if self.p == 0 or not self._candidates:
            return []
        generator = torch.Generator().manual_seed((self._seed * 1_000_003 + step) % (1 << 63))
        coins = torch.rand(len(self._candidates), generator=generator).tolist()
        return [position for position, coin in zip(self._candidates, coins) if coin < self.p]

    # ---- applying it --------------------------------------------------------------------------------
    def _setup(self, args, model: nn.Module) -> None:
        self._restore()
        adapter, record = get_adapter(model), get_record(model)
        if _distributed(args) and self.p > 0 and not _find_unused_parameters(args, model):
            raise PruningError(
                "LayerDropCallback under DDP leaves the dropped layers' parameters unused: "
                "set TrainingArguments(ddp_find_unused_parameters=True)"
            )
        if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
            logger.warning("LayerDropCallback is tested with single-process and DDP training only, not FSDP/DeepSpeed")
        self._model, self._layers = model, adapter.get_layers(model)
        self._kept_ids = list(record["kept_layers"])
        if self.layers is None:
            self._candidates = list(range(len(self._layers)))
        else:
            num_layers = record["original"]["num_layers"]
            missing = [layer for layer in self.layers if layer >= num_layers or layer not in self._kept_ids]
            if missing:
                raise PruningError(f"LayerDropCallback: layers {missing} are not in the model (original ids present: {self._kept_ids})")
            self._candidates = [self._kept_ids.index(layer) for layer in self.layers]
        self._indexed = [
            [(module, module.layer_idx) for module in layer.modules() if getattr(module, "layer_idx", None) is not None]
            for layer in self._layers
        ]
        layer_types = getattr(model.config, "layer_types", None)
        self._layer_types = layer_types if isinstance(layer_types, list) and len(layer_types) == len(self._layers) else None
        self._seed = self.seed if self.seed is not None else int(getattr(args, "seed", 0))

    def _install(self) -> None:
        """Swap in the kept layers for the next forward (called outside the model's forward)."""
        self._restore()
        if not self._drop or self._model is None:
            return
        model, keep = self._model, [p for p in range(len(self._layers)) if p not in set(self._drop)]
        get_adapter(model).set_layers(model, nn.ModuleList([self._layers[position] for position in keep]))
        # As in `drop_layers`: a cache built from the config (decoders with use_cache) is indexed by
        # `layer_idx`, and some models index `config.layer_types` by position.
        for new_index, position in enumerate(keep):
            for module, _ in self._indexed[position]:
                module.layer_idx = new_index
        if self._layer_types is not None:
            model.config.layer_types = [self._layer_types[position] for position in keep]
        self._hook = model.register_forward_hook(self._after_forward, always_call=True)
        self._installed = True

    @torch.compiler.disable
    def _after_forward(self, module, args, output) -> None:
        self._restore()

    def _restore(self) -> None:
        """Put the whole layer list back and remove the hook; a no-op when nothing is swapped in."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._installed:
            get_adapter(self._model).set_layers(self._model, self._layers)
            for modules in self._indexed:
                for module, layer_idx in modules:
                    module.layer_idx = layer_idx
            if self._layer_types is not None:
                self._model.config.layer_types = self._layer_types
            self._installed = False

    # ---- Trainer events -----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise PruningError("LayerDropCallback needs the model in on_train_begin")
        self._setup(args, model)

    def on_step_begin(self, args, state, control, **kwargs):
        if self._model is None:
            return
        self._drop = self._draw_positions(state.global_step)
        self.dropped_layers = [self._kept_ids[position] for position in self._drop]
        self.history.append((state.global_step, self.dropped_layers))
        self._install()

    def on_substep_end(self, args, state, control, **kwargs):
        self._install()  # the next micro-batch of the same optimizer step skips the same layers

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._restore()  # only needed where the post-forward hook did not run (e.g. hooks under torch.compile)

    def on_step_end(self, args, state, control, **kwargs):
        self._restore()
        self._drop = []

    def on_evaluate(self, args, state, control, **kwargs):
        self._restore()

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()
        self._drop, self._model, self._layers, self._layer_types, self._indexed = [], None, None, None, []


# ---- progress of a job's training stages --------------------------------------------------------------


class StageProgressCallback(TrainerCallback):
    """Report a training run as `progress(stage, steps done, max steps)`: 0 when it begins, then after each step."""

    def __init__(self, progress: Progress, stage: str):
        self.progress, self.stage = progress, stage

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress(self.stage, 0, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress(self.stage, state.global_step, state.max_steps)


def progress_callbacks(progress: Progress | None, stage: str) -> list[TrainerCallback]:
    """The callbacks to pass a `Trainer` for `progress` (none without one)."""
    return [StageProgressCallback(progress, stage)] if progress is not None else []
