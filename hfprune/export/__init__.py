"""What leaves hfprune: model cards, the Hub push, ONNX export and transformers-4 checkpoint conversion."""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "card": (
        "DEFAULT_TEMPLATE",
        "card_inputs",
        "metrics_from_history",
        "plot_head_importance",
        "plot_surviving_heads",
        "regenerate_model_card",
        "sanitize_paths",
        "sparsity_summary",
        "update_card_speed",
        "write_model_card",
    ),
    "convert": (
        "Conversion",
        "convert_checkpoint",
    ),
    "hub": (
        "HubPushError",
        "check_repo_id",
        "needs_card",
        "push_to_hub",
    ),
    "onnx": (
        "ONNX_DIR",
        "ONNX_FILE",
        "ONNX_REPORT",
        "OnnxExport",
        "OnnxMismatchError",
        "export_onnx",
        "read_onnx_report",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .card import (
        DEFAULT_TEMPLATE,
        card_inputs,
        metrics_from_history,
        plot_head_importance,
        plot_surviving_heads,
        regenerate_model_card,
        sanitize_paths,
        sparsity_summary,
        update_card_speed,
        write_model_card,
    )
    from .convert import Conversion, convert_checkpoint
    from .hub import HubPushError, check_repo_id, needs_card, push_to_hub
    from .onnx import ONNX_DIR, ONNX_FILE, ONNX_REPORT, OnnxExport, OnnxMismatchError, export_onnx, read_onnx_report
