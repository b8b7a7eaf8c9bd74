"""What a structure costs: what was removed (sparsity), FLOPs, wall-clock speed with a noise verdict, decoder
generation speed, and a latency model per layer, head and FFN neuron, kept between runs.
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "flops": ("count_flops",),
    "generation_speed": ("generation_against_dense", "measure_generation_speed",),
    "llama_cpp": ("llama_cpp_logits", "open_gguf", "require_llama_cpp",),
    "llama_cpp_speed": ("LlamaCppSpeedReport", "measure_llama_cpp_speed",),
    "latency": ("LatencyModel", "Timer", "measure_latency_model", "speed_timer", "structure_counts",),
    "latency_cache": ("cached_latency_model", "default_latency_cache", "latency_key",),
    "noise": ("assess_noise", "load_reasons", "noise_reasons",),
    "sparsity": ("num_parameters", "original_parameter_count", "sparsity_summary",),
    "speed": ("measure_speed", "time_against_dense",),
    "speed_report": ("SpeedReport",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
