"""BERT and its look-alikes (RoBERTa, ELECTRA): separate q/k/v Linears, output projection outside `attention.self`."""

from ...errors import PruningError
from .base import ArchAdapter


class BertAdapter(ArchAdapter):
    model_types = ("bert", "roberta", "electra")
    layers = "encoder.layer"
    attention = "attention.self"
    query = "attention.self.query"
    key = "attention.self.key"
    value = "attention.self.value"
    output = "attention.output.dense"
    output_inside_attention = False
    ffn_inputs = ("intermediate.dense",)
    ffn_output = "output.dense"
    head_count_attributes = ("num_attention_heads",)
    hidden_inputs = ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense")
    hidden_outputs = ("attention.output.dense", "output.dense")
    hidden_norms = ("attention.output.LayerNorm", "output.LayerNorm")
    no_width_pruning = ("crossattention",)

    # ELECTRA: embeddings of `embedding_size`, projected to `hidden_size` by `embeddings_project` when the two
    # differ. Equal sizes (no projection) stay equal: the embeddings are then part of the residual stream.
    def set_hidden_size(self, config, size):
        if getattr(config, "embedding_size", None) == config.hidden_size:
            config.embedding_size = size
        config.hidden_size = size

    def probe_hidden_size(self, config):
        size = 2 * config.hidden_size
        return size + config.hidden_size if getattr(config, "embedding_size", None) == size else size

    def check_width_prunable(self, model, new_size):
        config = model.config
        embedding = getattr(config, "embedding_size", None)
        if embedding is not None and embedding != config.hidden_size and new_size == embedding:
            raise PruningError(
                f"a hidden size equal to embedding_size ({embedding}) makes transformers build ELECTRA without its "
                "embeddings_project, and the checkpoint would not reload; keep a different number of channels"
            )
        super().check_width_prunable(model, new_size)

    def set_head_attributes(self, attention, num_heads, num_kv_heads, head_dim):
        attention.num_attention_heads = num_heads
        attention.all_head_size = num_heads * head_dim
