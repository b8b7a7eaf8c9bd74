"""Trainable L0 gates on attention heads, then physical removal of the heads they close.

Each head (under grouped-query attention: each key/value group) gets a hard-concrete gate z in [0, 1]
(Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0 Regularization"):

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  z = clamp(s (zeta - gamma) + gamma, 0, 1)

with beta = 2/3, gamma = -0.1, zeta = 1.1. The gate scales the head's context right before the attention
output projection (the same hook as `hfprune.apply_masks`), and the expected number of non-zero gates,
sum sigmoid(log_alpha - beta log(-gamma / zeta)), is a differentiable L0 penalty: its coefficient sets how
many heads close (Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads Do the
Heavy Lifting, the Rest Can Be Pruned"). Evaluation uses Louizos et al.'s deterministic gate
z_hat = clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1), which is exactly 0 or 1 once training has
pushed log_alpha far enough.

Shim, Choi, Sung & Choi 2021 ("Layer-wise Pruning of Transformer Attention Heads for Efficient Language
Modeling") add three stabilisers, all implemented here:

1. sparsity-loss warm-up: the penalty coefficient grows linearly from 0 to `l0_lambda` over `warmup_steps`;
2. gate initialisation: log_alpha starts where every gate is open with probability `init_keep`;
3. attention output scaling: a layer's gated context is multiplied by n / max(1, sum z_hat), n being the
   layer's number of heads and sum z_hat its expected number of open heads (z_hat is Louizos et al.'s
   test-time estimate of a gate). With binary gates this is n / (number of open heads), so the attention
   output keeps its magnitude as heads close; at initialisation it cancels the uniform z_hat exactly. The
   factor is a per-step constant (no gradient flows through it, as with inverted dropout's 1 / keep).

With a `target_sparsity` the penalty is CoFi's Lagrangian instead (Xia, Zhong & Chen 2022, "Structured
Pruning Learns Compact and Accurate Models"): lambda_1 (s - t) + lambda_2 (s - t)^2, with s the expected
fraction of heads closed and t the target (ramped over the warm-up from where the gates start, 1 - init_keep). The two multipliers
`lagrangian` are trained by gradient ASCENT beside the gates, so any gap between s and t grows its own
pressure until it closes, whatever the learning rate and number of steps; and the final decision closes
exactly round(t * heads) heads, the least open ones.

`HeadGates.finalize` makes the gates binary (a head stays iff z_hat > 0.5, i.e. log_alpha > 0), removes the
closed heads with `hfprune.prune_heads`, and folds the scale n / kept into the kept heads' output-projection
weights, so the pruned model computes exactly what the gated model computes in eval mode when its
deterministic gates are 0 or 1 (`binarize_` snaps them there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._validation import check_count, check_number
from .arch import get_adapter
from .errors import PruningError
from .record import get_record, gqa_group_size
from .surgery import prune_heads

GAMMA, ZETA = -0.1, 1.1  # stretch limits of the hard-concrete distribution (Louizos et al. 2018)
_EPS = 1e-6  # keeps the uniform noise away from 0 and 1, where its logit is infinite
_SNAP = 10.0  # |log_alpha| that makes z_hat exactly 0 or 1 (sigmoid(10) * 1.2 - 0.1 > 1)


@dataclass
class _Slot:
    """One current layer with attention: where it is, which original heads it has, and their gate units."""

    position: int
    index: int  # original layer index
    heads: list[int]  # original query heads that still exist
    units: torch.Tensor  # gate unit (head, or KV group) of each of `heads`


class HeadGates(nn.Module):
    """Hard-concrete L0 gates on the attention heads of one model, in ORIGINAL indices.

    `log_alpha` is `[num_layers, num_heads]` of the original model, or `[num_layers, num_kv_heads]` under
    grouped-query attention (one gate per KV group, so every closed set is a plan `prune_heads` accepts).
    Heads or layers already pruned have gates too, but those gates count for nothing and are never hooked.

    Args:
        model: a supported transformers model, pruned or not.
        init_keep: probability, at initialisation, that a gate is non-zero (Shim et al.'s gate initialisation).
        temperature: beta of the hard-concrete distribution.
        l0_lambda: coefficient of the normalised L0 penalty (see `penalty`); larger closes more heads.
        warmup_steps: steps over which the penalty coefficient ramps linearly from 0 (Shim et al.'s warm-up).
        scale_attention_output: multiply each layer's gated context by n / max(1, sum z_hat) (Shim et al.'s
            attention output scaling; see the module docstring).
        target_sparsity: the fraction of the gated heads to remove exactly, through the Lagrangian penalty
            (`l0_lambda` is then unused); None: the plain L0 penalty.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        init_keep: float = 0.95,
        temperature: float = 2 / 3,
        l0_lambda: float = 0.01,
        warmup_steps: int = 0,
        scale_attention_output: bool = True,
        target_sparsity: float | None = None,
    ):
        super().__init__()
        self.init_keep = check_number("init_keep", init_keep, 0, 1, open_low=True, open_high=True)
        self.temperature = check_number("temperature", temperature, 0, open_low=True)
        self.l0_lambda = check_number("l0_lambda", l0_lambda, 0)
        self.warmup_steps = check_count("warmup_steps", warmup_steps)
        if not isinstance(scale_attention_output, bool):
            raise PruningError(f"scale_attention_output must be True or False, got {scale_attention_output!r}")
        self.scale_attention_output = scale_attention_output
        if target_sparsity is not None:
            check_number("target_sparsity", target_sparsity, 0, 1, open_high=True)
        self.target_sparsity = target_sparsity

        self.adapter = get_adapter(model)
        record = get_record(model)
        self.num_layers, self.num_heads = record["original"]["num_layers"], record["original"]["num_heads"]
        self.group_size = gqa_group_size(record)
        num_units = self.num_heads // self.group_size
        device = next(model.parameters()).device
        # P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta)), solved for P = init_keep.
        start = math.log(self.init_keep / (1 - self.init_keep)) + self.temperature * math.log(-GAMMA / ZETA)
        self.log_alpha = nn.Parameter(torch.full((self.num_layers, num_units), start, device=device))
        self.lagrangian = nn.Parameter(torch.zeros(2, device=device))  # lambda_1, lambda_2 (target_sparsity only)
        # which original heads exist now, and how many of them each gate unit holds (read from the model)
        present = torch.zeros(self.num_layers, self.num_heads, dtype=torch.bool, device=device)
        self.register_buffer("present", present, persistent=False)
        self.register_buffer("head_counts", torch.zeros(self.num_layers, num_units, device=device), persistent=False)
        self._slots: list[_Slot] = []
        self._handles: list = []
        self._factors: torch.Tensor | None = None  # this forward's per-unit factors (gates x scale)
        self._read_structure(model)

    def extra_repr(self) -> str:
        return (
            f"gates={list(self.log_alpha.shape)}, group_size={self.group_size}, l0_lambda={self.l0_lambda}, "
            f"warmup_steps={self.warmup_steps}, scale_attention_output={self.scale_attention_output}"
        )

    # ---- structure ----------------------------------------------------------------------------------
    def _read_structure(self, model: nn.Module) -> None:
        """Which heads exist now (the model may have been pruned before): slots and per-unit head counts."""
        if get_adapter(model) is not self.adapter:
            raise PruningError("these gates were made for another model family; create HeadGates(model) anew")
        record = get_record(model)
        original = record["original"]
        if (original["num_layers"], original["num_heads"]) != (self.num_layers, self.num_heads):
            raise PruningError(
                f"these gates are for {self.num_layers} layers x {self.num_heads} heads, the model has "
                f"{original['num_layers']} x {original['num_heads']} (original sizes); create HeadGates(model) anew"
            )
        present = torch.zeros_like(self.present)
        self._slots = []
        for position, layer in enumerate(self.adapter.get_layers(model)):
            heads = record["kept_heads"][position]
            if not heads or not self.adapter.has_attention(layer):
                continue
            slot = _Slot(position, record["kept_layers"][position], list(heads), self._units_of(heads))
            present[slot.index, heads] = True
            self._slots.append(slot)
        self.present.copy_(present)
        self.head_counts.copy_(present.view(self.num_layers, -1, self.group_size).sum(dim=-1))

    def _units_of(self, heads: list[int]) -> torch.Tensor:
        return torch.as_tensor(heads, dtype=torch.long) // self.group_size

    @property
    def total_heads(self) -> int:
        """Number of query heads the gates control (those that existed when the structure was read)."""
        return int(self.head_counts.sum().item())

    # ---- the distribution ---------------------------------------------------------------------------
    def open_probability(self) -> torch.Tensor:
        """P(z > 0) per gate, `[num_layers, num_units]`, differentiable."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-GAMMA / ZETA))

    def deterministic_gates(self) -> torch.Tensor:
        """z_hat per gate unit, `[num_layers, num_units]`: Louizos et al.'s test-time gate, differentiable."""
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def sample_gates(self) -> torch.Tensor:
        """One stochastic draw of z per gate unit (reparameterised, so differentiable in log_alpha)."""
        noise = torch.rand_like(self.log_alpha).clamp(_EPS, 1 - _EPS)
        s = torch.sigmoid((noise.log() - (-noise).log1p() + self.log_alpha) / self.temperature)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def layer_scale(self) -> torch.Tensor:
        """Attention output scale per original layer, n / max(1, sum z_hat), without gradient."""
        with torch.no_grad():
            expected_open = (self.deterministic_gates() * self.head_counts).sum(dim=1)
            return self.head_counts.sum(dim=1) / expected_open.clamp(min=1.0)

    def factors(self, training: bool) -> torch.Tensor:
        """What multiplies each unit's context in one forward: a sample (training) or z_hat, times the scale."""
        gates = self.sample_gates() if training else self.deterministic_gates()
        if self.scale_attention_output:
            gates = gates * self.layer_scale()[:, None]
        return gates

    # ---- penalty ------------------------------------------------------------------------------------
    def expected_l0(self) -> torch.Tensor:
        """Expected number of open query heads (a KV-group gate counts once per head of its group)."""
        return (self.open_probability() * self.head_counts).sum()

    def warmup_factor(self, step: int) -> float:
        """min(1, step / warmup_steps): Shim et al.'s linear sparsity-loss warm-up (1 without warm-up)."""
        step = check_count("step", step)
        return 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)

    def penalty(self, step: int) -> torch.Tensor:
        """l0_lambda * warmup_factor(step) * expected_l0 / total_heads, or the Lagrangian with a target.

        Dividing by the number of gated heads makes the penalty `l0_lambda` times the expected FRACTION of
        heads kept, so one coefficient means the same sparsity pressure for any model size.
        """
        if self.target_sparsity is not None:
            start = 1 - self.init_keep  # the expected sparsity the gates start from: the target ramps from there
            target = start + (self.target_sparsity - start) * self.warmup_factor(step)
            gap = 1 - self.expected_l0() / max(self.total_heads, 1) - target
            return self.lagrangian[0] * gap + self.lagrangian[1] * gap**2
        factor = self.l0_lambda * self.warmup_factor(step)
        return factor * self.expected_l0() / max(self.total_heads, 1)

    # ---- hooks --------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> HeadGates:
        """Hook the gates into `model`: a training-mode forward samples new gates, an eval-mode one uses z_hat.

        The sample is drawn once per forward, in a pre-hook on `model`, and read by every layer (so gradient
        checkpointing recomputes a layer with the same gates). Attaching again first detaches.
        """
        self.detach()
        self._read_structure(model)
        self._handles.append(model.register_forward_pre_hook(self._start_forward))
        for slot in self._slots:
            layer = self.adapter.get_layers(model)[slot.position]
            self._handles.append(self.adapter.register_head_mask(layer, self._selector(slot)))
        return self

    def detach(self) -> None:
        """Remove every hook (idempotent); the model is back to what it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._factors = None

    def _start_forward(self, module: nn.Module, args) -> None:
        self._factors = self.factors(module.training)

    def _selector(self, slot: _Slot):
        def factor(reference: torch.Tensor) -> torch.Tensor:
            if self._factors is None:  # a sub-module run on its own: no pre-hook ran
                self._factors = self.factors(training=False)
            row = self._factors[slot.index].index_select(0, slot.units.to(self._factors.device))
            return row.to(device=reference.device, dtype=reference.dtype)

        return factor

    # ---- decisions ----------------------------------------------------------------------------------
    def gate_values(self) -> torch.Tensor:
        """Deterministic gates z_hat per head, `[num_layers, num_heads]` (0 for heads already pruned), detached."""
        with torch.no_grad():
            return self.deterministic_gates().repeat_interleave(self.group_size, dim=1) * self.present

    def _closed_units(self, slot: _Slot) -> list[int]:
        """Units of one layer to close (z_hat <= 0.5); the best one survives where a layer cannot lose all."""
        with torch.no_grad():
            gates, log_alpha = self.deterministic_gates()[slot.index], self.log_alpha[slot.index]
            units = sorted(set(slot.units.tolist()))
            closed = [unit for unit in units if gates[unit] <= 0.5]
            if len(closed) == len(units) and not self.adapter.can_remove_all_heads:
                closed.remove(max(units, key=lambda unit: log_alpha[unit].item()))
        return closed

    def _target_plan(self) -> dict[int, list[int]]:
        """Exactly round(target * gated heads) heads: the units with the smallest log_alpha, whole KV groups."""
        goal = round(self.target_sparsity * self.total_heads)
        with torch.no_grad():
            candidates = sorted(
                (float(self.log_alpha[slot.index, unit]), slot.index, unit)
                for slot in self._slots for unit in sorted(set(slot.units.tolist()))
            )  # fmt: skip
        units_left = {slot.index: len(set(slot.units.tolist())) for slot in self._slots}
        heads_of = {(slot.index, unit): slot.units.tolist().count(unit) for slot in self._slots for unit in slot.units.tolist()}
        closed: dict[int, set[int]] = {}
        removed = 0
        for _, index, unit in candidates:
            if removed + heads_of[index, unit] > goal:
                break
            if units_left[index] == 1 and not self.adapter.can_remove_all_heads:
                continue  # this family needs one head per layer
            closed.setdefault(index, set()).add(unit)
            units_left[index] -= 1
            removed += heads_of[index, unit]
        plan = {}
        for slot in self._slots:
            heads = [head for head, unit in zip(slot.heads, slot.units.tolist()) if unit in closed.get(slot.index, ())]
            if heads:
                plan[slot.index] = heads
        return plan

    def heads_to_prune(self) -> dict[int, list[int]]:
        """The heads whose gates are closed, `{original layer: [original heads]}`, valid for `prune_heads`.

        A gate is open iff z_hat > 0.5 (equivalently log_alpha > 0); with a `target_sparsity`, exactly that
        share of the heads closes instead, the least open first. Under grouped-query attention whole KV
        groups close. A layer may lose every head where the family allows it (`can_remove_all_heads`),
        otherwise its gate with the largest log_alpha stays open.
        """
        if self.target_sparsity is not None:
            return self._target_plan()
        plan = {}
        for slot in self._slots:
            closed = set(self._closed_units(slot))
            heads = [head for head, unit in zip(slot.heads, slot.units.tolist()) if unit in closed]
            if heads:
                plan[slot.index] = heads
        return plan

    def binarize_(self) -> HeadGates:
        """Snap log_alpha to +-10 by the `heads_to_prune` decision, so z_hat is exactly 1 (kept) or 0 (closed).

        The gated model in eval mode then computes exactly what `finalize` leaves; useful to evaluate (or
        briefly fine-tune) the final structure before the surgery.
        """
        with torch.no_grad():
            snapped = torch.full_like(self.log_alpha, _SNAP)
            for index, heads in self.heads_to_prune().items():
                snapped[index, self._units_of(heads).to(snapped.device)] = -_SNAP
            self.log_alpha.copy_(snapped)
        return self

    def finalize(self, model: nn.Module) -> dict[int, list[int]]:
        """Detach, remove the closed heads physically, and return the plan (original indices).

        Gate values are not folded into the weights (kept heads count as 1); with attention output scaling,
        the binary-gate scale n / kept is folded into each layer's output projection, so the result equals
        the gated eval model whenever z_hat is exactly 0 or 1.
        """
        self.detach()
        self._read_structure(model)
        plan = self.heads_to_prune()
        scales = self._binary_scales(plan)
        prune_heads(model, plan)
        layers = self.adapter.get_layers(model)
        for slot in self._slots:
            if scales.get(slot.index, 1.0) != 1.0:
                _scale_output_projection(self.adapter, layers[slot.position], scales[slot.index])
        self._read_structure(model)
        return plan

    def _binary_scales(self, plan: dict[int, list[int]]) -> dict[int, float]:
        """n / kept per original layer that keeps heads: the attention output scale once the gates are binary."""
        if not self.scale_attention_output:
            return {}
        kept = {slot.index: (len(slot.heads), len(slot.heads) - len(plan.get(slot.index, []))) for slot in self._slots}
        return {index: total / left for index, (total, left) in kept.items() if left}


def _scale_output_projection(adapter, layer: nn.Module, scale: float) -> None:
    """Multiply the attention output projection's weight (not its bias) by `scale`: the same as scaling its input."""
    try:
        weight = layer.get_submodule(adapter.output).weight
    except AttributeError:  # XLNet: the projection is a Parameter of `rel_attn`
        weight = layer.get_parameter(adapter.output)
    if weight.numel():
        with torch.no_grad():
            weight.mul_(scale)


__all__ = ["HeadGates"]
