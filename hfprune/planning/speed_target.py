"""`PruningArguments(target_speedup=X)`: prune until the model is X times faster, measured, not assumed.

`SpeedTarget` is what `PruningTrainer` keeps for a speed target:

- the latency model, measured on the dense model before anything is removed (`hfprune.measure.latency`), or with
  `latency_cache` (the default) the one measured before for the same shapes, timing setup and machine
  (`hfprune.measure.latency_cache`): fits vary from run to run, and so would the plans made on them;
- each step's time budget: an equal share of the time to save, corrected by what the steps before measured
  (after one measurement by the ratio of measured to predicted time, after two by the line through the last
  two: a fixed overhead the latency model missed is not a ratio; a line flatter or steeper than `SLOPE_RANGE` is
  noise, not a trend, and the ratio is used instead: on MiniLM-L6 two steps that measured 1.35x and 1.39x for
  predicted 1.20x and 1.40x gave a slope of 0.17, and the extra step it planned cut the model to 2.55x for a 1.5x
  target);
- the plan that meets it (`hfprune.planning.allocation.calibrated_allocation`), on scores calibrated against measured
  losses (`plan`);
- the measurement after every step, the pruned model timed beside the dense one: a result short of the target
  by more than `TOLERANCE` after the last step gets one more step (scoring, allocation, recovery), at most
  `speedup_extra_steps` times.

Target, predicted and measured speedups go into `report()`, and from there into the card and
`hfprune_results.json`.

Under `torchrun` rank 0 alone times (the latency model's fit and every measurement) and broadcasts the result, the
other ranks waiting (`hfprune.distributed.on_main_process`): processes on one machine would contend for its cores
and slow each other's timings down, and every rank must plan on the very same numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distributed import is_main_process, on_main_process
from ..errors import TargetOutOfReachError
from ..measure.latency import (
    LatencyModel,
    Timer,
    measure_latency_model,
    speed_timer,
)
from ..measure.latency_cache import cached_latency_model
from .allocation import calibrated_allocation

TOLERANCE = 0.03
"""A measured speedup within 3% of the target counts as met: closer than timing on a shared machine repeats."""
SLOPE_RANGE = (0.5, 2.0)
"""The measured-against-predicted time slopes trusted for a correction: outside, two measurements are too close
for their difference to be more than noise."""


class SpeedTarget:
    """The latency model, step budgets and measurements of one `target_speedup` run."""

    def __init__(
        self,
        model: nn.Module,
        args,
        timer: Timer | None = None,
        state: dict[str, Any] | None = None,
        reference: nn.Module | None = None,
    ):
        """`reference`: a copy of the dense `model` to time against (default: one is made, on rank 0 alone)."""
        self.target = float(args.target_speedup)
        self.extra_steps = args.speedup_extra_steps
        self.planned_steps = args.num_pruning_steps
        self.ffn_multiple = args.round_to_multiple
        self.uniform = bool(args.uniform)  # the same heads and FFN width in every kept layer
        self.timer = timer or speed_timer(
            args.speedup_batch_size, args.speedup_seq_len, device=args.device, num_threads=args.speedup_num_threads
        )
        if reference is None and is_main_process():  # to time the result against; the other ranks never time
            reference = copy.deepcopy(model).eval()
        self.reference = reference
        self.calibrations: list[dict[str, float]] = []  # each planned step's score factors, for the report
        if state is not None:  # a resumed run plans with the latency model it started with
            self.latency = LatencyModel.from_dict(state["latency"])
            self.latency_source = state.get("latency_source", "measured")
            self.measurements = state["measurements"]
        else:
            use_cache = args.latency_cache and timer is None  # a caller's own timer measures costs of its own
            self.latency, cached = on_main_process(lambda: self._latency_model(args, use_cache))
            self.latency_source = "measured" if cached is None else f"cached ({cached.name})"
            self.measurements = []
            floor = self.latency.floor_seconds()
            if self.latency.dense_seconds / self.target <= floor:
                raise TargetOutOfReachError(
                    f"target_speedup={self.target:g} is out of reach: the embeddings, the task head and one empty layer "
                    f"alone take {floor / self.latency.dense_seconds:.0%} of the dense model's time, so no pruning "
                    f"makes it more than {self.latency.dense_seconds / floor:.2f}x faster"
                )

    def _latency_model(self, args, use_cache: bool) -> tuple[LatencyModel, Path | None]:
        """The dense model's latency model, and the cache file it came from (None: measured now)."""

        def measure() -> LatencyModel:
            return measure_latency_model(
                self.reference, args.speedup_batch_size, args.speedup_seq_len, timer=self.timer, device=args.device
            )

        if not use_cache:
            return measure(), None
        return cached_latency_model(
            self.reference, measure, batch_size=args.speedup_batch_size, seq_len=args.speedup_seq_len,
            device=args.device, num_threads=args.speedup_num_threads,
        )  # fmt: skip

    def step_seconds(self, step: int, num_steps: int) -> float:
        """The predicted forward time pruning step `step` brings the model down to: an equal share of the time
        to save per step (extra steps: all of it), corrected by the measurements of the steps before."""
        wanted = 1 - (1 - 1 / self.target) * min(step / num_steps, 1.0)
        if not self.measurements:
            return self.latency.dense_seconds * wanted
        return self.latency.dense_seconds * self._corrected_time(wanted)

    def _corrected_time(self, wanted: float) -> float:
        """The predicted time (a fraction of dense) expected to MEASURE `wanted`, from the measurements so far."""
        points = [(1 / entry["predicted_speedup"], 1 / entry["measured_speedup"]) for entry in self.measurements]
        predicted, measured = points[-1]
        corrected = wanted * predicted / measured  # measured time proportional to predicted
        if len(points) >= 2 and points[-2][0] != predicted:
            slope = (measured - points[-2][1]) / (predicted - points[-2][0])
            if SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]:  # measured = slope * predicted + offset, through the last two
                corrected = predicted + (wanted - measured) / slope
        return min(max(corrected, 1e-3), predicted)  # never less pruned than now: surgery cannot be undone

    def plan(
        self, model: nn.Module, scores: dict[str, torch.Tensor], seconds: float, dataloader=None, weight: int = 1
    ) -> dict[str, Any]:
        """The allocation for `seconds`; with a `dataloader`, on scores calibrated against measured losses
        (`hfprune.planning.allocation.calibrated_allocation`). `weight`: this process's examples, for averaging."""
        plan = calibrated_allocation(
            model, scores, self.latency, seconds, dataloader, ffn_multiple=self.ffn_multiple, weight=weight,
            uniform=self.uniform,
        )  # fmt: skip
        if "calibration" in plan:
            self.calibrations.append(plan["calibration"])
        return plan

    def measure(self, model: nn.Module, step: int) -> dict[str, Any]:
        """Time `model` beside the dense model (rank 0), and keep the measurement for the corrections."""
        times = on_main_process(lambda: self.timer({"dense": self.reference, "pruned": model}))
        measured = times["dense"] / times["pruned"]
        predicted = self.latency.speedup(model)
        entry = {"step": step, "predicted_speedup": predicted, "measured_speedup": measured}
        self.measurements.append(entry)
        return entry

    def needs_more(self, model: nn.Module, step: int, num_steps: int) -> bool:
        """After each step: measure; after the last planned one (or an extra one), say whether to prune more."""
        entry = self.measure(model, step)
        if step < num_steps:
            return False
        met = entry["measured_speedup"] >= self.target * (1 - TOLERANCE)
        if met or step - num_steps >= self.extra_steps:
            return False
        # a corrected target below what any structure can reach would fail the next step: stop, missed
        return self.step_seconds(step + 1, num_steps) > self.latency.floor_seconds()

    def state(self) -> dict[str, Any]:
        return {"latency": self.latency.to_dict(), "latency_source": self.latency_source, "measurements": self.measurements}

    def report(self) -> dict[str, Any]:
        """Target, predicted and measured speedup of the final model, with how they were measured."""
        last = self.measurements[-1] if self.measurements else {}
        return {
            "target_speedup": self.target,
            "predicted_speedup": last.get("predicted_speedup"),
            "measured_speedup": last.get("measured_speedup"),
            "met": bool(last) and last["measured_speedup"] >= self.target * (1 - TOLERANCE),
            "batch_size": self.latency.batch_size,
            "seq_len": self.latency.seq_len,
            "planned_steps": self.planned_steps,
            "measurements": list(self.measurements),
            "calibrations": list(self.calibrations),
            "latency_model": self.latency.to_dict(),
            "latency_source": self.latency_source,
        }


__all__ = ["SLOPE_RANGE", "TOLERANCE", "SpeedTarget"]
