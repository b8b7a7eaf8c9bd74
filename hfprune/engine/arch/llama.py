"""The Llama family (Llama, Mistral, Qwen2, Qwen3): grouped-query attention and a gated MLP.

Query heads are grouped over key/value heads; `repeat_kv` gives every KV head the same number of query
heads, so surgery keeps whole KV groups and the same number of query heads in each surviving group.
"""

from .base import ArchAdapter


class LlamaAdapter(ArchAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    causal_lm = True
    layers = "layers"
    attention = "self_attn"
    query = "self_attn.q_proj"
    key = "self_attn.k_proj"
    value = "self_attn.v_proj"
    output = "self_attn.o_proj"
    ffn_inputs = ("mlp.gate_proj", "mlp.up_proj")
    ffn_output = "mlp.down_proj"
    ffn_width_attributes = ("mlp.intermediate_size",)
    num_kv_heads_field = "num_key_value_heads"
    uniform_heads_in_config = True

    hidden_inputs = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
    hidden_outputs = ("self_attn.o_proj", "mlp.down_proj")
    hidden_norms = ("input_layernorm", "post_attention_layernorm")
    hidden_attributes = ("hidden_size", "mlp.hidden_size")

    def config_head_dim(self, config):
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def set_head_attributes(self, attention, num_heads, num_kv_heads, head_dim):
        attention.num_key_value_groups = num_heads // num_kv_heads
