"""Streamed GGUF export (`hfprune.stream_export_gguf`, `hfprune export --format gguf --stream`, and the streamed
job's `gguf_dtype`): the file `export_gguf` writes, byte for byte, with one layer in memory at a time; its check
in llama.cpp against logits computed one layer at a time; bad input refused in one line, nothing left behind."""

from __future__ import annotations

import gc
import json
import re
import weakref

import numpy as np
import pytest
import torch
import transformers
from cli_fixtures import one_error_line
from hfprune.cli import app
from test_gguf import (
    HAS_LLAMA_CPP,
    needs_llama_cpp,
    perturb_one_weight,
    stock,
    tiny_llama,
    tiny_tokenizer,
    uneven,
    width_pruned,
)
from typer.testing import CliRunner

import hfprune
from hfprune.errors import PipelineInputError, PruningError
from hfprune.export.gguf_check import GgufMismatchError, check_sequences, pytorch_logits
from hfprune.streaming import gguf as stream_gguf
from hfprune.streaming.layers import StreamedCheckpoint

pytest.importorskip("gguf")


def with_biases(seed: int = 0) -> transformers.LlamaForCausalLM:
    """Attention and MLP biases (nonzero), then layer 2's attention and layer 3's MLP removed: their blocks keep
    their output bias, so the file carries them in zero stand-ins (read from the checkpoint before its layer)."""
    config = transformers.LlamaConfig(
        vocab_size=99, hidden_size=64, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        intermediate_size=48, max_position_embeddings=128, attention_bias=True, mlp_bias=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    hfprune.prune_heads(model, {2: range(8), 0: [2, 3]})
    hfprune.prune_ffn(model, {3: range(48), 1: range(0, 48, 3)})
    return model


STRUCTURES = {
    "uniform": lambda: stock(tiny_llama()),
    "dense-tied": lambda: tiny_llama(tie=True),
    "uneven": lambda: uneven(tiny_llama()),  # uneven heads, KV groups and FFN, a removed MLP, a dropped layer
    "layer0-no-attention-tied-width": lambda: width_pruned(tiny_llama(tie=True)),
    "removed-blocks-with-biases": with_biases,
}


def save(model, folder, shard: str | None = None):
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_the_streamed_file_is_export_gguf_s_byte_for_byte(structure, tmp_path):
    checkpoint = save(STRUCTURES[structure](), tmp_path / "ckpt", shard="20KB" if structure == "uneven" else None)
    if structure == "uneven":
        assert len(list(checkpoint.glob("*.safetensors"))) > 1  # sharded
    for dtype in ("f32", "f16", "bf16"):
        loaded = hfprune.export_gguf(checkpoint, tmp_path / f"{dtype}.gguf", dtype=dtype, tokenizer_pre="gpt-2", check=False)
        streamed = hfprune.stream_export_gguf(checkpoint, tmp_path / f"{dtype}-streamed.gguf", dtype=dtype, tokenizer_pre="gpt-2", check=False)
        assert streamed.path.read_bytes() == loaded.path.read_bytes(), dtype
        assert {**streamed.to_dict(), "file": None} == {**loaded.to_dict(), "file": None}
    if structure == "removed-blocks-with-biases":
        assert [note.split(":")[0] for note in streamed.stand_ins] == ["layer 2", "layer 3"]


def test_the_reference_logits_are_the_loaded_model_s(tmp_path):
    checkpoint = save(uneven(tiny_llama()), tmp_path / "ckpt")
    sequences = check_sequences(99, 32)
    want = pytorch_logits(hfprune.from_pretrained(checkpoint, dtype=torch.float32).eval(), sequences)
    with StreamedCheckpoint(checkpoint, dtype=torch.float32) as streamed:
        got = stream_gguf.reference_logits(streamed, sequences)
    assert [logits.shape for logits in got] == [logits.shape for logits in want]
    assert max(float(np.abs(mine - theirs).max()) for mine, theirs in zip(got, want)) <= 1e-5


@pytest.fixture
def ckpt(tmp_path):
    return save(uneven(tiny_llama()), tmp_path / "ckpt")


def test_at_most_one_layer_s_weights_are_in_memory_at_a_time(ckpt, tmp_path, monkeypatch):
    """Every weight read from the checkpoint is tracked (weakly) under the layer it belongs to; whenever a layer's
    weights are read, no weight of any other layer may still be alive anywhere, and the embeddings, final norm and
    head are read once."""
    alive: list[tuple[str, weakref.ref]] = []
    reads: list[str] = []

    def owner_of(name: str) -> str:
        found = re.match(r"(.*\.layers\.\d+\.)", name)
        return found.group(1) if found else "outer"

    def reading(owner: str) -> None:
        gc.collect()
        others = {who for who, ref in alive if ref() is not None and who not in (owner, "outer")}
        assert not others, f"reading {owner} while weights of {sorted(others)} are still in memory"
        reads.append(owner)

    load, read = StreamedCheckpoint._load, StreamedCheckpoint.read

    def tracked_load(self, root, names, prefix=""):
        reading(owner_of(prefix) if prefix else "outer")
        load(self, root, names, prefix)
        alive.extend((owner_of(prefix) if prefix else "outer", weakref.ref(root.get_parameter(name))) for name in names)

    def tracked_read(self, name):
        reading(owner_of(name))
        tensor = read(self, name)
        alive.append((owner_of(name), weakref.ref(tensor)))
        return tensor

    monkeypatch.setattr(StreamedCheckpoint, "_load", tracked_load)
    monkeypatch.setattr(StreamedCheckpoint, "read", tracked_read)
    result = hfprune.stream_export_gguf(ckpt, tmp_path / "m.gguf", dtype="bf16", tokenizer_pre="gpt-2", check=HAS_LLAMA_CPP)
    layers = [f"model.layers.{index}." for index in range(len(result.head_count))]
    assert reads == ["outer", *layers * (2 if HAS_LLAMA_CPP else 1)]  # the check's pass, then the file's
    gc.collect()
    assert not [who for who, ref in alive if ref() is not None and who != "outer"]


@needs_llama_cpp
@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_the_streamed_check_passes_and_refuses_a_file_unlike_the_checkpoint(dtype, ckpt, tmp_path, monkeypatch):
    result = hfprune.stream_export_gguf(ckpt, tmp_path / "ok.gguf", dtype=dtype, tokenizer_pre="gpt-2")
    assert result.sequences == 3 and 0 < result.max_relative_difference <= result.tolerance
    if dtype == "q8_0":
        assert result.f32_max_relative_difference <= 1e-4
    perturb_one_weight(monkeypatch)
    with pytest.raises(GgufMismatchError, match=r"more than the 0.0001 tolerance for f32") as error:
        hfprune.stream_export_gguf(ckpt, tmp_path / "bad.gguf", dtype=dtype, tokenizer_pre="gpt-2")
    assert "\n" not in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt", "ok.gguf"]  # no temporary file either


def test_a_failure_while_writing_leaves_nothing(ckpt, tmp_path, monkeypatch):
    real = StreamedCheckpoint.layer

    def failing(self, position):
        if position == 2:
            raise OSError("disk read error")
        return real(self, position)

    monkeypatch.setattr(StreamedCheckpoint, "layer", failing)
    with pytest.raises(OSError, match="disk read error"):
        hfprune.stream_export_gguf(ckpt, tmp_path / "m.gguf", tokenizer_pre="gpt-2", check=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]


def test_bad_input_is_one_line_and_writes_nothing(ckpt, tmp_path):
    target = tmp_path / "out.gguf"
    with pytest.raises(PipelineInputError, match="is not a checkpoint folder") as error:
        hfprune.stream_export_gguf(tmp_path / "missing", target)
    assert "\n" not in str(error.value)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=99))
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(PruningError, match=r"Llama family .* not 'gpt2'") as error:
        hfprune.stream_export_gguf(tmp_path / "gpt2", target, tokenizer=tiny_tokenizer())
    assert "\n" not in str(error.value)
    with pytest.raises(PruningError, match="dtype must be one of"):
        hfprune.stream_export_gguf(ckpt, target, dtype="q3")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt", "gpt2"]
    target.write_text("old")
    with pytest.raises(PipelineInputError, match="exists; pass overwrite=True"):
        hfprune.stream_export_gguf(ckpt, target, tokenizer_pre="gpt-2", check=False)
    assert target.read_text() == "old"
    hfprune.stream_export_gguf(ckpt, target, tokenizer_pre="gpt-2", check=False, overwrite=True)
    assert target.read_bytes()[:4] == b"GGUF" and sorted(path.name for path in tmp_path.iterdir()) == ["ckpt", "gpt2", "out.gguf"]


def test_the_export_command_streams(ckpt, tmp_path):
    runner = CliRunner()

    def export(out, *options):
        args = ["export", str(ckpt), "--format", "gguf", "-o", str(out), "--tokenizer-pre", "gpt-2", *options]
        return runner.invoke(app, args + ([] if HAS_LLAMA_CPP else ["--no-check"]))

    streamed = export(tmp_path / "streamed.gguf", "--stream")
    assert streamed.exit_code == 0, streamed.output
    assert "architecture deci" in streamed.output
    assert export(tmp_path / "loaded.gguf").exit_code == 0
    assert (tmp_path / "streamed.gguf").read_bytes() == (tmp_path / "loaded.gguf").read_bytes()
    assert "--overwrite" in one_error_line(export(tmp_path / "streamed.gguf", "--stream"))
    assert "not a checkpoint folder" in one_error_line(runner.invoke(app, ["export", str(tmp_path / "no"), "--format", "gguf", "--stream", "-o", str(tmp_path / "x.gguf")]))
    assert "--stream writes GGUF" in one_error_line(runner.invoke(app, ["export", str(ckpt), "--stream", "-o", str(tmp_path / "onnx")]))


# ---- the streamed job ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_job(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer (what GGUF export writes), and text files for task 'lm'."""
    folder = tmp_path_factory.mktemp("lm")
    save(tiny_llama(), folder / "llama")
    text = " ".join(f"word{index % 17} of line {index}." for index in range(400))
    (folder / "data").mkdir()
    (folder / "data" / "train.txt").write_text(text)
    (folder / "data" / "validation.txt").write_text(text[:2000])
    return folder


@needs_llama_cpp
@pytest.mark.filterwarnings("ignore:the tokenizer's pre-tokenizer")  # the tiny tokenizer's: written as 'default'
def test_the_streamed_job_writes_a_checked_gguf_into_its_checkpoint(lm_job, tmp_path):
    out = tmp_path / "out"
    result = hfprune.prune_for_task(
        str(lm_job / "llama"), "lm", data_dir=lm_job / "data", output_dir=out, stream=True, param_budget=0.8,
        max_length=16, score_num_examples=16, gguf_dtype="f32",
    )  # fmt: skip
    assert result.gguf["file"] == "model-f32.gguf" and result.gguf["max_relative_difference"] <= 1e-4
    assert "gguf" in result.timings
    stored = json.loads((out / "hfprune_results.json").read_text())
    assert stored["card"]["gguf"]["file"] == "model-f32.gguf"
    assert "llama-cli -m model-f32.gguf" in (out / "README.md").read_text()
    again = hfprune.export_gguf(out, tmp_path / "loaded.gguf", check=False)  # the pruned checkpoint, loaded whole
    assert (out / "model-f32.gguf").read_bytes() == again.path.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["loaded.gguf", "out"]


def test_the_streamed_job_refuses_a_bad_gguf_dtype_before_any_work(lm_job, tmp_path):
    with pytest.raises(PipelineInputError, match="gguf_dtype must be one of"):
        hfprune.prune_for_task(
            str(lm_job / "llama"), "lm", data_dir=lm_job / "data", output_dir=tmp_path / "out", stream=True,
            param_budget=0.8, gguf_dtype="q3",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
