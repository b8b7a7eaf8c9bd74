"""XLNet: q/k/v/o/r are Parameters of shape [d_model, heads, d_head] inside `rel_attn`, not Linears.

There is no output-projection module to hook, so head masks wrap `rel_attn.post_attention`, which
receives the per-head context `[len, batch, heads, d_head]` for both attention streams.
"""

import torch

from ...errors import PruningError
from ..transaction import slice_parameter
from .base import ArchAdapter

_HEAD_PARAMETERS = {"q": 1, "k": 1, "v": 1, "o": 1, "r": 1, "r_r_bias": 0, "r_s_bias": 0, "r_w_bias": 0, "seg_embed": 1}


class _Handle:
    def __init__(self, module):
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("post_attention", None)


class XLNetAdapter(ArchAdapter):
    model_types = ("xlnet",)
    layers = "layer"
    attention = "rel_attn"
    query, key, value, output = "rel_attn.q", "rel_attn.k", "rel_attn.v", "rel_attn.o"
    ffn_inputs = ("ff.layer_1",)
    ffn_output = "ff.layer_2"
    num_layers_field = "n_layer"
    num_heads_field = "n_head"
    intermediate_field = "d_inner"
    time_major = True

    # `r` stays whole: it reads the sinusoidal position encoding, which is `d_model` wide in the ORIGINAL
    # width (XLNetModel.d_model is left as it was), not the residual stream.
    hidden_inputs = ("ff.layer_1",)
    hidden_outputs = ("ff.layer_2",)
    hidden_parameters = ("rel_attn.q", "rel_attn.k", "rel_attn.v", "rel_attn.o")
    hidden_norms = ("rel_attn.layer_norm", "ff.layer_norm")
    hidden_attributes = ("rel_attn.d_model",)

    def config_head_dim(self, config):
        return config.d_head

    def set_build_head_count(self, config, num_heads):
        # XLNetConfig insists on d_head == d_model // n_head; the real head width is in the record.
        config.n_head = num_heads
        config.d_head = config.d_model // num_heads

    def register_head_mask(self, layer, factor):
        attention = layer.rel_attn
        original = type(attention).post_attention.__get__(attention)

        def post_attention(h, attn_vec, residual=True):
            scale = factor(attn_vec)
            return original(h, attn_vec if scale is None else attn_vec * scale[:, None], residual=residual)

        attention.post_attention = post_attention  # instance attribute; removed by the handle
        return _Handle(attention)

    def slice_heads(self, layer, keep_heads, keep_kv_heads, head_dim):
        attention = layer.rel_attn
        index = torch.as_tensor(keep_heads, dtype=torch.long, device=attention.q.device)
        for name, dim in _HEAD_PARAMETERS.items():
            slice_parameter(attention, name, index, dim)
        attention.n_head = len(keep_heads)

    def layer_widths(self, layer):
        attention = layer.rel_attn
        heads = {getattr(attention, name).shape[dim] for name, dim in _HEAD_PARAMETERS.items()}
        if len(heads) != 1:
            raise PruningError(f"the attention parameters of a layer disagree ({sorted(heads)} heads)")
        width = heads.pop() * attention.q.shape[2]
        return width, width, self.ffn_width(layer)

    def remove_attention(self, layer, layer_idx, head_dim):
        # Zero heads is a valid XLNet shape: every einsum over heads is empty, the block adds nothing.
        self.slice_heads(layer, [], [], head_dim)
