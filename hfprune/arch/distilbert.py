"""DistilBERT: `q_lin`/`k_lin`/`v_lin`/`out_lin` inside one attention block, FFN `lin1`/`lin2`."""

from .base import ArchAdapter


class DistilBertAdapter(ArchAdapter):
    model_types = ("distilbert",)
    layers = "transformer.layer"
    attention = "attention"
    query = "attention.q_lin"
    key = "attention.k_lin"
    value = "attention.v_lin"
    output = "attention.out_lin"
    ffn_inputs = ("ffn.lin1",)
    ffn_output = "ffn.lin2"
    num_layers_field = "n_layers"
    num_heads_field = "n_heads"
    intermediate_field = "hidden_dim"
    head_count_attributes = ("n_heads",)

    def head_dim(self, config):
        return config.dim // config.n_heads
