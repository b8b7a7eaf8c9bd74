"""BERT and its look-alikes (RoBERTa, ELECTRA): separate q/k/v Linears, output projection outside `attention.self`."""

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

    def set_head_attributes(self, attention, num_heads, num_kv_heads, head_dim):
        attention.num_attention_heads = num_heads
        attention.all_head_size = num_heads * head_dim
