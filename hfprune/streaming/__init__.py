"""Pruning a checkpoint without holding it in memory: the model's layers are read one at a time from its
safetensors files (`layers`), scored on calibration data that flows through them layer by layer (`scores`), and
cut tensor by tensor from the input shards into the output shards (`surgery`), and written to GGUF for llama.cpp
(`gguf`).
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "gguf": ("stream_export_gguf",),
    "layers": ("DEFAULT_MAX_MEMORY", "HiddenStates", "StreamedCheckpoint",),
    "perplexity": ("streamed_perplexity",),
    "reconstruct": ("stream_reconstruct",),
    "scores": ("DEFAULT_STREAM_KINDS", "LAYER_KINDS", "STREAM_KINDS", "stream_scores",),
    "surgery": ("prune_checkpoint",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
