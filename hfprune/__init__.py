"""hfprune: structured pruning of attention heads, FFN neurons and layers for Hugging Face transformers 5."""

from .arch import ArchAdapter, get_adapter, register_adapter, supported_model_types
from .errors import PruningError
from .loading import from_pretrained, save_for_remote_code
from .masks import MaskHandle, apply_masks, make_ffn_mask, make_head_mask, make_layer_mask, skip_layers
from .record import get_record
from .structure import EmptyAttention
from .surgery import drop_layers, prune_ffn, prune_heads

__version__ = "0.1.0"

__all__ = [
    "ArchAdapter",
    "EmptyAttention",
    "MaskHandle",
    "PruningError",
    "apply_masks",
    "drop_layers",
    "from_pretrained",
    "get_adapter",
    "get_record",
    "make_ffn_mask",
    "make_head_mask",
    "make_layer_mask",
    "prune_ffn",
    "prune_heads",
    "register_adapter",
    "save_for_remote_code",
    "skip_layers",
    "supported_model_types",
]
