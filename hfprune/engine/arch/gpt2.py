"""GPT-2: Conv1D layers (weights stored [in, out]) and one fused `c_attn` holding q, k and v side by side."""

import torch

from ...errors import PruningError
from ..structure import EmptyMLP
from .base import ArchAdapter, head_index, slice_linear, stand_in


class GPT2Adapter(ArchAdapter):
    model_types = ("gpt2",)
    causal_lm = True
    layers = "h"
    attention = "attn"
    query = key = value = "attn.c_attn"
    output = "attn.c_proj"
    ffn_inputs = ("mlp.c_fc",)
    ffn_output = "mlp.c_proj"
    num_layers_field = "n_layer"
    num_heads_field = "n_head"
    intermediate_field = "n_inner"

    hidden_inputs = ("attn.c_attn", "mlp.c_fc")
    hidden_outputs = ("attn.c_proj", "mlp.c_proj")
    hidden_norms = ("ln_1", "ln_2")
    hidden_attributes = ("attn.embed_dim",)
    model_hidden_attributes = ("embed_dim",)
    no_width_pruning = ("crossattention",)

    def intermediate_size(self, config):
        return config.n_inner if config.n_inner is not None else 4 * config.hidden_size

    def slice_heads(self, layer, keep_heads, keep_kv_heads, head_dim):
        attention = layer.attn
        q_index = head_index(keep_heads, head_dim)
        split = attention.split_size  # width of each of q, k, v inside c_attn
        fused_index = torch.cat([q_index + part * split for part in range(3)])
        slice_linear(attention.c_attn, fused_index, dim=0)
        slice_linear(attention.c_proj, q_index, dim=1)
        attention.num_heads = len(keep_heads)
        attention.split_size = len(keep_heads) * head_dim

    def layer_widths(self, layer):
        if not self.has_attention(layer):
            return 0, 0, self.ffn_width(layer)
        fused, output = layer.attn.c_attn.weight.shape[1], layer.attn.c_proj.weight.shape[0]
        if fused != 3 * output:
            raise PruningError(
                f"the attention projections of a layer disagree (c_attn {fused}, c_proj {output} features)"
            )
        return output, output, self.ffn_width(layer)

    def slice_ffn(self, layer, keep):
        if keep:
            return super().slice_ffn(layer, keep)
        # Conv1D cannot multiply a zero-width input: the whole MLP becomes its output bias.
        layer.mlp = stand_in(EmptyMLP, layer.mlp.c_proj.nf, layer.mlp.c_proj)
