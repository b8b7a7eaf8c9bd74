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

    hidden_inputs = ("attention.q_lin", "attention.k_lin", "attention.v_lin", "ffn.lin1")
    hidden_outputs = ("attention.out_lin", "ffn.lin2")
    hidden_norms = ("sa_layer_norm", "output_layer_norm")
    hidden_attributes = ("attention.dim",)

    def config_head_dim(self, config):
        return config.dim // config.n_heads
