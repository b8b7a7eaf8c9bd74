"""Trainable L0 gates on attention heads, then physical removal of the heads they close.

Each head (under grouped-query attention: each key/value group) gets a hard-concrete gate z in [0, 1] (Louizos,
Welling & Kingma 2018, "Learning Sparse Neural Networks through L0 Regularization"):

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  z = clamp(s (zeta - gamma) + gamma, 0, 1)

with beta = 2/3, gamma = -0.1, zeta = 1.1. The gate scales the head's context right before the attention output
projection (the same hook as `hfprune.apply_masks`), and the expected number of non-zero gates,
sum sigmoid(log_alpha - beta log(-gamma / zeta)), is a differentiable L0 penalty: its coefficient sets how many heads
close (Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting, the Rest Can
Be Pruned").
Evaluation uses Louizos et al.'s deterministic gate z_hat = clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1),
which is exactly 0 or 1 once training has pushed log_alpha far enough.

Shim, Choi, Sung & Choi 2021 ("Layer-wise Pruning of Transformer Attention Heads for Efficient Language Modeling") add
three stabilisers, all implemented here:

1. sparsity-loss warm-up: the penalty coefficient grows linearly from 0 to `l0_lambda` over `warmup_steps`;
2. gate initialisation: log_alpha starts where every gate is open with probability `init_keep`;
3. attention output scaling: a layer's gated context is multiplied by n / max(1, sum z_hat), n being the layer's
   number of heads and sum z_hat its expected number of open heads (z_hat is Louizos et al.'s test-time estimate of a
   gate). With binary gates this is n / (number of open heads), so the attention output keeps its magnitude as heads
   close; at initialisation it cancels the uniform z_hat exactly. The factor is a per-step constant (no gradient flows
   through it, as with inverted dropout's 1 / keep).

With a `target_sparsity` the penalty is CoFi's Lagrangian instead (Xia, Zhong & Chen 2022, "Structured Pruning Learns
Compact and Accurate Models"): lambda_1 (s - t) + lambda_2 (s - t)^2, with s the expected fraction of heads closed and
t the target (ramped over the warm-up from where the gates start, 1 - init_keep). The two multipliers `lagrangian` are
trained by gradient ASCENT beside the gates, so any gap between s and t grows its own pressure until it closes,
whatever the learning rate and number of steps; and the final decision closes exactly round(t * heads) heads, the
least open ones.

CoFi also gates coarser units, and so can `HeadGates`: with `ffn=True` every FFN neuron gets a gate (scaling its
activation before the FFN output projection, the hook of `apply_masks(ffn_mask=...)`), and with `blocks=True` every
layer's attention block and MLP block get one more gate each, multiplying all of that block's heads or neurons, so a
whole block can close. The kinds are then put on one scale by a cost per unit (`costs`, a
`hfprune.measure.latency.LatencyModel`: the parameters of `hfprune.planning.param_target.parameter_cost_model` by
default, or seconds). The penalty and the target are then the expected fraction of the gated COST kept or removed, sum
over layers of P(block open) * (block + unit cost * sum of P(unit open)), and `param_budget=b` sets the target that
keeps b of the model's parameters. With a target, the least open gates of any kind close, in order, skipping those
that would overshoot, so the removed cost lands within one of the smallest unit (an FFN neuron) of the target.

`HeadGates.finalize` makes the gates binary (a head stays iff z_hat > 0.5, i.e. log_alpha > 0), removes the closed
heads with `hfprune.prune_heads`, and folds the scale n / kept into the kept heads' output-projection weights, removes
the FFN neurons (and blocks) whose gates closed, so the pruned model computes exactly what the gated model computes in
eval mode when its deterministic gates are 0 or 1 (`binarize_` snaps them there); `uniform=True`: stock shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_count, check_number
from ..engine.arch import get_adapter
from ..engine.checks import model_for_surgery
from ..engine.record import get_record, gqa_group_size, kept_ffn
from ..engine.surgery import prune_ffn, prune_heads
from ..engine.transaction import all_or_nothing
from ..errors import PruningError, TargetOutOfReachError
from ..measure.latency import LatencyModel
from ..measure.sparsity import num_parameters
from ..planning.param_target import parameter_cost_model
from ..planning.uniform import uniform_closed, uniform_counts

GAMMA, ZETA = -0.1, 1.1  # stretch limits of the hard-concrete distribution (Louizos et al. 2018)
_EPS = 1e-6  # keeps the uniform noise away from 0 and 1, where its logit is infinite
_SNAP = 10.0  # |log_alpha| that makes z_hat exactly 0 or 1 (sigmoid(10) * 1.2 - 0.1 > 1)


def _open_probability(log_alpha: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(z > 0) of hard-concrete gates, differentiable."""
    return torch.sigmoid(log_alpha - temperature * math.log(-GAMMA / ZETA))


def _deterministic(log_alpha: torch.Tensor) -> torch.Tensor:
    """Louizos et al.'s test-time gate z_hat, differentiable."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _sample(log_alpha: torch.Tensor, temperature: float) -> torch.Tensor:
    """One reparameterised draw of z per gate (differentiable in log_alpha)."""
    noise = torch.rand_like(log_alpha).clamp(_EPS, 1 - _EPS)
    s = torch.sigmoid((noise.log() - (-noise).log1p() + log_alpha) / temperature)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


@dataclass
class _Slot:
    """One current layer with attention: where it is, which original heads it has, and their gate units."""

    position: int
    index: int  # original layer index
    heads: list[int]  # original query heads that still exist
    units: torch.Tensor  # gate unit (head, or KV group) of each of `heads`


@dataclass
class _FFNSlot:
    """One current layer with an MLP: where it is and which original FFN neurons it still has."""

    position: int
    index: int  # original layer index
    neurons: torch.Tensor  # original neuron ids, in the order the layer holds them


@dataclass(frozen=True)
class GateCosts:
    """What one unit of each gated kind costs (parameters, seconds, ...): a query head, a block's own cost
    beyond its units, an FFN neuron. Kinds that are not gated cost 0, so the total is the gated cost."""

    head: float
    attention: float = 0.0
    neuron: float = 0.0
    mlp: float = 0.0


class HeadGates(nn.Module):
    """Hard-concrete L0 gates on the attention heads of one model and, optionally, on its FFN neurons and whole
    attention and MLP blocks, in ORIGINAL indices.

    `log_alpha` is `[num_layers, num_heads]` of the original model, or `[num_layers, num_kv_heads]` under
    grouped-query attention (one gate per KV group, so every closed set is a plan `prune_heads` accepts);
    `ffn_log_alpha` is `[num_layers, intermediate_size]` and `block_log_alpha` `[num_layers, 2]` (attention,
    MLP) when those kinds are gated. Heads, neurons or layers already pruned have gates too, but those gates
    count for nothing and are never hooked.

    Args:
        model: a supported transformers model, pruned or not.
        init_keep: probability, at initialisation, that a gate is non-zero (Shim et al.'s gate initialisation).
        temperature: beta of the hard-concrete distribution.
        l0_lambda: coefficient of the normalised L0 penalty (see `penalty`); larger closes more.
        warmup_steps: steps over which the penalty coefficient ramps linearly from 0 (Shim et al.'s warm-up).
        scale_attention_output: multiply each layer's gated context by n / max(1, sum z_hat) (Shim et al.'s
            attention output scaling; see the module docstring).
        target_sparsity: the fraction of the gated cost to remove (with heads only: of the gated heads),
            through the Lagrangian penalty (`l0_lambda` is then unused); None: the plain L0 penalty.
        ffn: gate every FFN neuron too.
        blocks: gate every attention block and MLP block as a whole too.
        costs: a `LatencyModel` (parameters or seconds) that puts the kinds on one scale; default: the
            parameters of `parameter_cost_model(model)` when FFN neurons or blocks are gated, one per head
            otherwise.
        param_budget: the fraction of the model's parameters to keep; sets `target_sparsity` (from parameter
            costs; exclusive with `target_sparsity` and `costs`).
        uniform: stock shapes: every layer keeps as many head units and neurons (its most open ones), never none.
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
        ffn: bool = False,
        blocks: bool = False,
        costs: LatencyModel | None = None,
        param_budget: float | None = None,
        uniform: bool = False,
    ):
        super().__init__()
        self.init_keep = check_number("init_keep", init_keep, 0, 1, open_low=True, open_high=True)
        self.temperature = check_number("temperature", temperature, 0, open_low=True)
        self.l0_lambda = check_number("l0_lambda", l0_lambda, 0)
        self.warmup_steps = check_count("warmup_steps", warmup_steps)
        flags = {"scale_attention_output": scale_attention_output, "ffn": ffn, "blocks": blocks, "uniform": uniform}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise PruningError(f"{name} must be True or False, got {value!r}")
        if uniform and blocks:
            raise PruningError("uniform shapes never remove a whole attention or MLP block: use blocks=False")
        self.scale_attention_output, self.gate_ffn, self.gate_blocks, self.uniform = flags.values()
        if target_sparsity is not None:
            check_number("target_sparsity", target_sparsity, 0, 1, open_high=True)
        if param_budget is not None:
            check_number("param_budget", param_budget, 0, 1, open_low=True)
            if target_sparsity is not None or costs is not None:
                raise PruningError("param_budget sets the target from parameter costs: leave target_sparsity and costs unset")

        self.adapter = get_adapter(model)
        record = get_record(model)
        original = record["original"]
        self.num_layers, self.num_heads = original["num_layers"], original["num_heads"]
        self.group_size = gqa_group_size(record)
        num_units = self.num_heads // self.group_size
        device = next(model.parameters()).device
        # P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta)), solved for P = init_keep.
        start = math.log(self.init_keep / (1 - self.init_keep)) + self.temperature * math.log(-GAMMA / ZETA)

        def gates(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.full(shape, start, device=device))

        self.log_alpha = gates(self.num_layers, num_units)
        self.ffn_log_alpha = gates(self.num_layers, original["intermediate_size"]) if ffn else None
        self.block_log_alpha = gates(self.num_layers, 2) if blocks else None
        self.lagrangian = nn.Parameter(torch.zeros(2, device=device))  # lambda_1, lambda_2 (with a target only)
        # which original heads and neurons exist now, and how many heads each gate unit holds (read from the model)
        present = torch.zeros(self.num_layers, self.num_heads, dtype=torch.bool, device=device)
        self.register_buffer("present", present, persistent=False)
        self.register_buffer("head_counts", torch.zeros(self.num_layers, num_units, device=device), persistent=False)
        ffn_present = torch.zeros(self.num_layers, original["intermediate_size"], device=device)
        self.register_buffer("ffn_present", ffn_present, persistent=False)
        self._slots: list[_Slot] = []
        self._ffn_slots: list[_FFNSlot] = []
        self._handles: list = []
        self._factors: dict[str, torch.Tensor | None] | None = None  # this forward's factors (gates x scale)
        self._read_structure(model)

        if costs is None and (ffn or blocks or param_budget is not None):
            costs = parameter_cost_model(model)
        self.costs = GateCosts(head=1.0) if costs is None else GateCosts(
            head=costs.head, attention=costs.attention if blocks else 0.0,
            neuron=costs.neuron if ffn or blocks else 0.0, mlp=costs.mlp if blocks else 0.0,
        )  # fmt: skip
        self.dense_cost = float(self._cost(*self._all_open()))
        if param_budget is not None:
            parameters = num_parameters(model)
            target_sparsity = (1 - param_budget) * parameters / max(self.dense_cost, 1e-12)
            if target_sparsity >= 1:
                more = "" if ffn and (blocks or uniform) else "gate more kinds (ffn=True, blocks=True) or "
                raise TargetOutOfReachError(
                    f"param_budget={param_budget:g} is out of reach: the gated units hold {self.dense_cost:,.0f} of the "
                    f"model's {parameters:,} parameters; {more}raise the budget"
                )
        self.target_sparsity = target_sparsity
        self.param_budget = param_budget
        # the expected sparsity the gates start from: a target ramps from there over the warm-up
        with torch.no_grad():
            self._start_sparsity = 1 - float(self.expected_cost()) / max(self.dense_cost, 1e-12)

    def extra_repr(self) -> str:
        kinds = ["heads"] + ["ffn"] * self.gate_ffn + ["blocks"] * self.gate_blocks
        return (f"gates={list(self.log_alpha.shape)}, kinds={kinds}, group_size={self.group_size}, l0_lambda={self.l0_lambda}, "
                f"warmup_steps={self.warmup_steps}, scale_attention_output={self.scale_attention_output}, uniform={self.uniform}")

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates' log-alphas (what the optimizer trains by descent; `lagrangian` climbs)."""
        return [p for p in (self.log_alpha, self.ffn_log_alpha, self.block_log_alpha) if p is not None]

    # ---- structure ----------------------------------------------------------------------------------
    def _read_structure(self, model: nn.Module) -> None:
        """Which heads and neurons exist now (the model may have been pruned before): slots and counts."""
        if get_adapter(model) is not self.adapter:
            raise PruningError("these gates were made for another model family; create HeadGates(model) anew")
        record = get_record(model)
        original = record["original"]
        if (original["num_layers"], original["num_heads"]) != (self.num_layers, self.num_heads):
            raise PruningError(
                f"these gates are for {self.num_layers} layers x {self.num_heads} heads, the model has "
                f"{original['num_layers']} x {original['num_heads']} (original sizes); create HeadGates(model) anew"
            )
        present, ffn_present = torch.zeros_like(self.present), torch.zeros_like(self.ffn_present)
        self._slots, self._ffn_slots = [], []
        for position, layer in enumerate(self.adapter.get_layers(model)):
            index = record["kept_layers"][position]
            neurons = kept_ffn(record, position)
            if neurons:
                ffn_present[index, neurons] = 1.0
                self._ffn_slots.append(_FFNSlot(position, index, torch.as_tensor(neurons, dtype=torch.long)))
            heads = record["kept_heads"][position]
            if not heads or not self.adapter.has_attention(layer):
                continue
            slot = _Slot(position, index, list(heads), self._units_of(heads))
            present[slot.index, heads] = True
            self._slots.append(slot)
        self.present.copy_(present)
        self.ffn_present.copy_(ffn_present)
        self.head_counts.copy_(present.view(self.num_layers, -1, self.group_size).sum(dim=-1))
        if self.uniform:  # the kept counts every layer may take, in gate units (KV groups, neurons)
            heads = [count // self.group_size for count in uniform_counts(model, "heads")]
            self._counts = {"heads": heads, "ffn": uniform_counts(model, "ffn") if self.gate_ffn else []}

    def _units_of(self, heads: list[int]) -> torch.Tensor:
        return torch.as_tensor(heads, dtype=torch.long) // self.group_size

    @property
    def total_heads(self) -> int:
        """Number of query heads the gates control (those that existed when the structure was read)."""
        return int(self.head_counts.sum().item())

    # ---- the distribution ---------------------------------------------------------------------------
    def open_probability(self) -> torch.Tensor:
        """P(z > 0) per head gate, `[num_layers, num_units]`, differentiable."""
        return _open_probability(self.log_alpha, self.temperature)

    def deterministic_gates(self) -> torch.Tensor:
        """z_hat per head gate unit, `[num_layers, num_units]`: Louizos et al.'s test-time gate, differentiable."""
        return _deterministic(self.log_alpha)

    def sample_gates(self) -> torch.Tensor:
        """One stochastic draw of z per head gate unit (reparameterised, so differentiable in log_alpha)."""
        return _sample(self.log_alpha, self.temperature)

    def layer_scale(self) -> torch.Tensor:
        """Attention output scale per original layer, n / max(1, sum z_hat), without gradient."""
        with torch.no_grad():
            expected_open = (self.deterministic_gates() * self.head_counts).sum(dim=1)
            return self.head_counts.sum(dim=1) / expected_open.clamp(min=1.0)

    def factors(self, training: bool) -> dict[str, torch.Tensor | None]:
        """What multiplies each head unit's context (`"heads"`) and each neuron (`"ffn"`, None when neither
        neurons nor blocks are gated) in one forward: a sample (training) or z_hat, times the scales."""

        def draw(log_alpha: torch.Tensor) -> torch.Tensor:
            return _sample(log_alpha, self.temperature) if training else _deterministic(log_alpha)

        heads = draw(self.log_alpha)
        if self.scale_attention_output:
            heads = heads * self.layer_scale()[:, None]
        ffn = draw(self.ffn_log_alpha) if self.gate_ffn else None
        if self.gate_blocks:
            blocks = draw(self.block_log_alpha)
            heads = heads * blocks[:, :1]
            ffn = blocks[:, 1:].expand_as(self.ffn_present) if ffn is None else ffn * blocks[:, 1:]
        return {"heads": heads, "ffn": ffn}

    # ---- penalty ------------------------------------------------------------------------------------
    def expected_l0(self) -> torch.Tensor:
        """Expected number of open query heads (a KV-group gate counts once per head of its group)."""
        return (self.open_probability() * self.head_counts).sum()

    def _cost(self, heads: torch.Tensor, neurons: torch.Tensor | None, blocks: torch.Tensor | None) -> torch.Tensor:
        """The gated cost, from per-gate open indicators or probabilities: sum over layers of
        block * (block cost + unit cost * open units); `neurons` None: every present neuron counts as open."""
        costs = self.costs
        open_heads = (heads * self.head_counts).sum(dim=1)
        open_neurons = self.ffn_present.sum(dim=1) if neurons is None else (neurons * self.ffn_present).sum(dim=1)
        attention = costs.head * open_heads + costs.attention * (self.head_counts.sum(dim=1) > 0)
        mlp = costs.neuron * open_neurons + costs.mlp * (self.ffn_present.sum(dim=1) > 0)
        if blocks is not None:
            attention, mlp = attention * blocks[:, 0], mlp * blocks[:, 1]
        return (attention + mlp).sum()

    def _all_open(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        ones = [None if p is None else torch.ones_like(p) for p in (self.ffn_log_alpha, self.block_log_alpha)]
        return (torch.ones_like(self.log_alpha), *ones)

    def expected_cost(self) -> torch.Tensor:
        """Expected gated cost kept, differentiable (with heads only and no `costs`: the expected open heads)."""

        def probability(log_alpha: torch.Tensor | None) -> torch.Tensor | None:
            return None if log_alpha is None else _open_probability(log_alpha, self.temperature)

        return self._cost(self.open_probability(), probability(self.ffn_log_alpha), probability(self.block_log_alpha))

    def expected_sparsity(self) -> torch.Tensor:
        """The expected fraction of the gated cost removed, differentiable."""
        return 1 - self.expected_cost() / max(self.dense_cost, 1e-12)

    def warmup_factor(self, step: int) -> float:
        """min(1, step / warmup_steps): Shim et al.'s linear sparsity-loss warm-up (1 without warm-up)."""
        step = check_count("step", step)
        return 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)

    def penalty(self, step: int) -> torch.Tensor:
        """l0_lambda * warmup_factor(step) * the expected fraction of the gated cost kept, or the Lagrangian
        with a target.

        Normalising by the dense cost (with heads only: the number of gated heads) makes `l0_lambda` the same
        sparsity pressure for any model size.
        """
        if self.target_sparsity is not None:
            start = self._start_sparsity
            target = start + (self.target_sparsity - start) * self.warmup_factor(step)
            gap = self.expected_sparsity() - target
            return self.lagrangian[0] * gap + self.lagrangian[1] * gap**2
        factor = self.l0_lambda * self.warmup_factor(step)
        return factor * (1 - self.expected_sparsity())

    # ---- hooks --------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> HeadGates:
        """Hook the gates into `model`: a training-mode forward samples new gates, an eval-mode one uses z_hat.

        The sample is drawn once per forward, in a pre-hook on `model`, and read by every layer (so gradient
        checkpointing recomputes a layer with the same gates). Attaching again first detaches.
        """
        self.detach()
        self._read_structure(model)
        self._handles.append(model.register_forward_pre_hook(self._start_forward))
        layers = self.adapter.get_layers(model)
        for slot in self._slots:
            self._handles.append(self.adapter.register_head_mask(layers[slot.position], self._selector("heads", slot.index, slot.units)))
        if self.gate_ffn or self.gate_blocks:
            for ffn_slot in self._ffn_slots:
                selector = self._selector("ffn", ffn_slot.index, ffn_slot.neurons)
                self._handles.append(self.adapter.register_ffn_mask(layers[ffn_slot.position], selector))
        return self

    def detach(self) -> None:
        """Remove every hook (idempotent); the model is back to what it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._factors = None

    def _start_forward(self, module: nn.Module, args) -> None:
        self._factors = self.factors(module.training)

    def _selector(self, kind: str, index: int, columns: torch.Tensor):
        """The factor hook of one layer: row `index` of this forward's `kind` factors, at `columns`."""

        def factor(reference: torch.Tensor) -> torch.Tensor:
            if self._factors is None:  # a sub-module run on its own: no pre-hook ran
                self._factors = self.factors(training=False)
            row = self._factors[kind][index].index_select(0, columns.to(self._factors[kind].device))
            return row.to(device=reference.device, dtype=reference.dtype)

        return factor

    # ---- decisions ----------------------------------------------------------------------------------
    def gate_values(self) -> torch.Tensor:
        """Deterministic gates z_hat per head, `[num_layers, num_heads]` (0 for heads already pruned), detached;
        with block gates, times the attention block's z_hat."""
        with torch.no_grad():
            values = self.deterministic_gates()
            if self.gate_blocks:
                values = values * _deterministic(self.block_log_alpha)[:, :1]
            return values.repeat_interleave(self.group_size, dim=1) * self.present

    def _decide(self) -> tuple[dict[int, set[int]], dict[int, set[int]], set[tuple[int, int]]]:
        """Closed head units, closed neurons and closed blocks `(layer, 0 attention / 1 MLP)`, original indices."""
        if self.uniform:
            return self._uniform_decision()
        if self.target_sparsity is not None:
            return self._target_decision()
        with torch.no_grad():
            units = {
                slot.index: {unit for unit in set(slot.units.tolist()) if self.log_alpha[slot.index, unit] <= 0}
                for slot in self._slots
            }
            neurons = {}
            if self.gate_ffn:
                for slot in self._ffn_slots:
                    neurons[slot.index] = {n for n in slot.neurons.tolist() if self.ffn_log_alpha[slot.index, n] <= 0}
            blocks = set()
            if self.gate_blocks:
                blocks = {(index, kind) for index, kind in (self.block_log_alpha <= 0).nonzero().tolist()}
        return units, neurons, blocks

    def _target_decision(self) -> tuple[dict[int, set[int]], dict[int, set[int]], set[tuple[int, int]]]:
        """The least open gates of every kind close, in order, skipping those that would remove more than
        `target_sparsity` of the dense cost (and half the smallest unit: heads only, round(target * heads) heads);
        so the removed cost ends within one of the smallest unit of the target."""
        costs, goal = self.costs, self.target_sparsity * self.dense_cost
        slack = (costs.neuron if self.gate_ffn else costs.head * self.group_size) / 2  # half the smallest unit
        heads_of = {(slot.index, unit): slot.units.tolist().count(unit) for slot in self._slots for unit in slot.units.tolist()}
        open_units = {slot.index: set(slot.units.tolist()) for slot in self._slots}
        open_neurons = {slot.index: set(slot.neurons.tolist()) for slot in self._ffn_slots}
        with torch.no_grad():
            candidates = [(float(self.log_alpha[i, unit]), 0, i, unit) for i, unit in heads_of]
            if self.gate_ffn:
                candidates += [(float(self.ffn_log_alpha[i, n]), 1, i, n) for i, kept in open_neurons.items() for n in kept]
            if self.gate_blocks:
                candidates += [(float(self.block_log_alpha[i, 0]), 2, i, 0) for i in open_units]
                candidates += [(float(self.block_log_alpha[i, 1]), 2, i, 1) for i in open_neurons]
        closed_blocks: set[tuple[int, int]] = set()
        removed = 0.0
        for _, kind, index, unit in sorted(candidates):
            if kind == 0:  # a head unit (KV group; the last one takes its block's own cost with it)
                if (index, 0) in closed_blocks:
                    continue
                if len(open_units[index]) == 1 and not self.adapter.can_remove_all_heads:
                    continue  # this family needs one head per layer
                cost = costs.head * heads_of[index, unit] + (costs.attention if len(open_units[index]) == 1 else 0.0)
            elif kind == 1:  # an FFN neuron (the last one takes its block's own cost with it)
                if (index, 1) in closed_blocks:
                    continue
                cost = costs.neuron + (costs.mlp if len(open_neurons[index]) == 1 else 0.0)
            elif unit == 0:  # an attention block: its own cost and its heads still open
                if not open_units[index] or not self.adapter.can_remove_all_heads:
                    continue
                cost = costs.attention + costs.head * sum(heads_of[index, u] for u in open_units[index])
            else:  # an MLP block
                if not open_neurons[index]:
                    continue
                cost = costs.mlp + costs.neuron * len(open_neurons[index])
            if removed + cost > goal + slack:
                continue  # past the target: a smaller unit may still fit
            removed += cost
            if kind == 0:
                open_units[index].discard(unit)
            elif kind == 1:
                open_neurons[index].discard(unit)
            else:
                closed_blocks.add((index, unit))
        units = {slot.index: set(slot.units.tolist()) - open_units[slot.index] for slot in self._slots}
        neurons = {slot.index: set(slot.neurons.tolist()) - open_neurons[slot.index] for slot in self._ffn_slots}
        return units, neurons, closed_blocks

    def _uniform_decision(self) -> tuple[dict[int, set[int]], dict[int, set[int]], set[tuple[int, int]]]:
        """Every layer keeps its k most open head units and w most open neurons, the same k and w everywhere, never
        0; with a target, to within one such step of it (`hfprune.planning.uniform.uniform_closed`)."""
        heads, ffn = self.log_alpha.tolist(), self.ffn_log_alpha.tolist() if self.gate_ffn else None
        rows = {"heads": {slot.index: {u: heads[slot.index][u] for u in slot.units.tolist()} for slot in self._slots}}
        if self.gate_ffn:
            rows["ffn"] = {slot.index: {n: ffn[slot.index][n] for n in slot.neurons.tolist()} for slot in self._ffn_slots}
        goal = None if self.target_sparsity is None else self.target_sparsity * self.dense_cost
        closed = uniform_closed(rows, self._counts, {"heads": self.costs.head * self.group_size, "ffn": self.costs.neuron}, goal)
        return closed["heads"], closed.get("ffn", {}), set()

    def plan(self) -> dict[str, dict[int, list[int]]]:
        """What closed gates remove: `{"heads": {layer: [heads]}, "ffn": {layer: [neurons]}}`, original indices,
        valid for `prune_heads` and `prune_ffn`.

        A gate is open iff z_hat > 0.5 (equivalently log_alpha > 0); a closed block removes all its heads or
        neurons. With a `target_sparsity`, the least open gates close instead (see `_target_decision`). Under
        grouped-query attention whole KV groups close. A layer may lose every head where the family allows it
        (`can_remove_all_heads`), otherwise its gate with the largest log_alpha stays open.
        """
        units, neurons, blocks = self._decide()
        heads_plan = {}
        for slot in self._slots:
            closed = set(slot.units.tolist()) if (slot.index, 0) in blocks else units.get(slot.index, set())
            if len(closed) == len(set(slot.units.tolist())) and not self.adapter.can_remove_all_heads:
                with torch.no_grad():
                    closed = closed - {max(closed, key=lambda unit: self.log_alpha[slot.index, unit].item())}
            heads = [head for head, unit in zip(slot.heads, slot.units.tolist()) if unit in closed]
            if heads:
                heads_plan[slot.index] = heads
        ffn_plan = {}
        for slot in self._ffn_slots:
            closed = set(slot.neurons.tolist()) if (slot.index, 1) in blocks else neurons.get(slot.index, set())
            if closed:
                ffn_plan[slot.index] = sorted(closed)
        return {"heads": heads_plan, "ffn": ffn_plan}

    def heads_to_prune(self) -> dict[int, list[int]]:
        """The heads whose gates are closed, `{original layer: [original heads]}` (`plan()["heads"]`)."""
        return self.plan()["heads"]

    def binarize_(self) -> HeadGates:
        """Snap every log_alpha to +-10 by the `plan` decision, so z_hat is exactly 1 (kept) or 0 (closed).

        The gated model in eval mode then computes exactly what `finalize` leaves; useful to evaluate (or
        briefly fine-tune) the final structure before the surgery.
        """
        plan = self.plan()
        with torch.no_grad():
            snapped = torch.full_like(self.log_alpha, _SNAP)
            for index, heads in plan["heads"].items():
                snapped[index, self._units_of(heads).to(snapped.device)] = -_SNAP
            self.log_alpha.copy_(snapped)
            if self.ffn_log_alpha is not None:
                snapped = torch.full_like(self.ffn_log_alpha, _SNAP)
                for index, neurons in plan["ffn"].items():
                    snapped[index, neurons] = -_SNAP
                self.ffn_log_alpha.copy_(snapped)
            if self.block_log_alpha is not None:
                self.block_log_alpha.fill_(_SNAP)  # a closed block's units are closed themselves
        return self

    def finalize(self, model: nn.Module) -> dict[str, dict[int, list[int]]]:
        """Detach, remove the closed heads and neurons physically, and return the `plan` (original indices).

        Gate values are not folded into the weights (kept units count as 1); with attention output scaling,
        the binary-gate scale n / kept is folded into each layer's output projection, so the result equals
        the gated eval model whenever every z_hat is exactly 0 or 1.
        """
        self.detach()
        self._read_structure(model)
        plan = self.plan()
        scales = self._binary_scales(plan["heads"])
        with all_or_nothing(model_for_surgery(model)):
            prune_heads(model, plan["heads"])
            if plan["ffn"]:
                prune_ffn(model, plan["ffn"])
        layers = self.adapter.get_layers(model)  # pruning heads and neurons keeps every layer where it was
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


__all__ = ["GateCosts", "HeadGates"]
