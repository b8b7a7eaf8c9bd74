"""Tiny random models of every supported family, shared by the tests."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Before any test module copies the environment for its subprocesses: latency models measured by the suite never
# land in the user's HF_HOME (nor are read from it). `_own_latency_cache` narrows this to one folder per test.
os.environ["HFPRUNE_LATENCY_CACHE"] = tempfile.mkdtemp(prefix="hfprune-latency-")

import pytest
import torch
import transformers

VOCAB = 99

# family -> (config class, config kwargs, task model class); each has 3 layers of 4 heads.
FAMILIES = {
    "bert": ("BertConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24), "BertForSequenceClassification"),
    "roberta": ("RobertaConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24, pad_token_id=1), "RobertaForSequenceClassification"),
    "electra": ("ElectraConfig", dict(embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24), "ElectraForSequenceClassification"),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=3, n_heads=4, hidden_dim=24), "DistilBertForSequenceClassification"),
    "xlnet": ("XLNetConfig", dict(d_model=32, n_layer=3, n_head=4, d_inner=24), "XLNetForSequenceClassification"),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=3, n_head=4, n_inner=24, n_positions=64), "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=24), "LlamaForCausalLM"),
    "mistral": ("MistralConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=24), "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=24), "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=24), "Qwen3ForCausalLM"),
}
DECODERS = {"gpt2", "llama", "mistral", "qwen2", "qwen3"}
GQA = {"llama", "mistral", "qwen2", "qwen3"}
# XLNet computes attention with its own einsums: it has no sdpa path.
ATTENTION = [(family, impl) for family in FAMILIES for impl in ("eager", "sdpa") if not (family == "xlnet" and impl == "sdpa")]


def tiny_model(family: str, attn_implementation: str = "eager", seed: int = 0):
    config_name, kwargs, model_name = FAMILIES[family]
    config = getattr(transformers, config_name)(vocab_size=VOCAB, num_labels=3, **kwargs)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    # Random init leaves biases at zero and LayerNorms at identity; perturb every parameter so that a
    # wrong slice cannot hide behind a zero.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def tiny_inputs(batch: int = 2, length: int = 7, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, -2:] = 0  # padding exercises the attention mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(params=ATTENTION, ids=[f"{f}-{i}" for f, i in ATTENTION])
def family_impl(request):
    return request.param


@pytest.fixture(autouse=True)
def _own_latency_cache(tmp_path_factory, monkeypatch):
    """Each test keeps latency models in a folder of its own (`PruningConfig.latency_cache`), subprocesses too: a
    fit one test measured must not decide another's plan."""
    monkeypatch.setenv("HFPRUNE_LATENCY_CACHE", str(tmp_path_factory.mktemp("latency-cache")))


def tiny_pruning_args(output_dir, **overrides):
    """`PruningArguments` for a tiny CPU run: no saving, no progress bars, a log line every step."""
    from hfprune.pruning_config import PruningArguments

    defaults = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=8, save_strategy="no",
        logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    return PruningArguments(**{**defaults, **overrides})

