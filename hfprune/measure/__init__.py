"""What a structure costs: FLOPs, wall-clock speed with a noise verdict, decoder generation speed, and a
latency model per layer, head and FFN neuron.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "generation_speed": (
        "generation_against_dense",
        "measure_generation_speed",
    ),
    "latency": (
        "LatencyModel",
        "Timer",
        "measure_latency_model",
        "speed_timer",
        "structure_counts",
    ),
    "speed": (
        "SpeedReport",
        "assess_noise",
        "count_flops",
        "load_reasons",
        "measure_speed",
        "noise_reasons",
        "time_against_dense",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .generation_speed import generation_against_dense, measure_generation_speed
    from .latency import LatencyModel, Timer, measure_latency_model, speed_timer, structure_counts
    from .speed import (
        SpeedReport,
        assess_noise,
        count_flops,
        load_reasons,
        measure_speed,
        noise_reasons,
        time_against_dense,
    )
