"""What leaves hfprune: model cards, the Hub push, ONNX and GGUF export and transformers-4 checkpoint conversion."""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "card": (
        "DEFAULT_TEMPLATE", "check_card_checkpoint", "regenerate_model_card", "update_card_gguf",
        "update_card_llama_cpp_speed", "update_card_speed", "write_model_card",
    ),
    "card_sections": (
        "eval_results", "is_score", "loading_section", "provenance_section", "results_section", "speed_section",
        "structure_section", "task_info",
    ),
    "card_source": (
        "LOCAL_PLACEHOLDER", "base_model_ids", "card_inputs", "importance_tensor", "metrics_from_history", "per_split",
        "prune_card_inputs", "python_call", "sanitize_paths", "sanitized", "speed_report", "stored_card_inputs",
    ),
    "convert": ("Conversion", "convert_checkpoint",),
    "gguf": ("GGUF_DTYPES", "GgufExport", "export_gguf",),
    "gguf_check": ("GGUF_QUANTIZED", "GGUF_TOLERANCES", "GgufMismatchError",),
    "hub": ("ErrorsOnly", "HubPushError", "check_repo_id", "needs_card", "push_to_hub", "quiet_retries",),
    "onnx": (
        "ONNX_DIR", "ONNX_FILE", "ONNX_REPORT", "OnnxExport", "OnnxMismatchError", "export_onnx", "read_onnx_report",
    ),
    "plots": ("kept_matrix", "plot_head_importance", "plot_surviving_heads",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
