"""Streamed scoring (`hfprune.streaming.stream_scores`): one layer in memory at a time, the in-memory scores."""

import pytest
import torch
from conftest import tiny_inputs, tiny_model

import hfprune
from hfprune import activation_scores, angular_distance, block_influence, layer_cosine_scores
from hfprune.errors import PruningError
from hfprune.streaming import StreamedCheckpoint, stream_scores


def batches(count: int = 3, seed: int = 1) -> list[dict]:
    return [tiny_inputs(batch=2, length=7, seed=seed + number) for number in range(count)]


def saved(tmp_path, model, name: str = "model", **kwargs):
    folder = tmp_path / name
    model.save_pretrained(folder, **kwargs)
    return folder


def assert_close(streamed: torch.Tensor, expected: torch.Tensor) -> None:
    assert streamed.shape == expected.shape
    assert torch.equal(streamed.isnan(), expected.isnan())
    present = ~expected.isnan()
    scale = expected[present].abs().max().clamp_min(1e-12)
    assert ((streamed[present] - expected[present]).abs().max() / scale) <= 1e-4


@pytest.mark.parametrize("family", ["llama", "bert", "qwen3"])
def test_streamed_scores_match_in_memory_scores(tmp_path, family):
    model = tiny_model(family)
    folder = saved(tmp_path, model)
    data = batches()
    kinds = ("heads", "kv_groups", "ffn", "hidden", "angular_distance", "block_influence", "layer_cosine")
    streamed = stream_scores(folder, data, kinds)
    reloaded = hfprune.from_pretrained(folder).eval()
    expected = activation_scores(reloaded, data, ("heads", "kv_groups", "ffn", "hidden"))
    expected["angular_distance"] = angular_distance(reloaded, data)
    expected["block_influence"] = block_influence(reloaded, data)
    expected["layer_cosine"] = layer_cosine_scores(reloaded, data)
    assert list(streamed) == list(kinds)
    for kind in kinds:
        assert_close(streamed[kind], expected[kind])


def test_streamed_scores_of_a_pruned_sharded_checkpoint_spilling_to_disk(tmp_path):
    """An hfprune checkpoint (a dropped layer, fewer heads and neurons), saved in shards, with the hidden
    states between layers on disk: still the in-memory scores, NaN where units are gone."""
    model = tiny_model("llama")
    hfprune.prune_heads(model, {0: [0, 1]})  # one KV group
    hfprune.prune_ffn(model, {1: list(range(10))})
    hfprune.drop_layers(model, [2])
    folder = saved(tmp_path, model, max_shard_size="4KB")
    assert (folder / "model.safetensors.index.json").is_file()
    data = batches()
    streamed = stream_scores(folder, data, ("heads", "ffn", "angular_distance"), span=2, max_memory=0, normalize=True)
    reloaded = hfprune.from_pretrained(folder).eval()
    expected = activation_scores(reloaded, data, ("heads", "ffn"), normalize=True)
    assert_close(streamed["heads"], expected["heads"])
    assert_close(streamed["ffn"], expected["ffn"])
    assert_close(streamed["angular_distance"], angular_distance(reloaded, data, n=2))
    assert streamed["heads"][0, :2].isnan().all() and streamed["ffn"][2].isnan().all()


def test_a_streamed_checkpoint_holds_one_layer_at_a_time(tmp_path):
    folder = saved(tmp_path, tiny_model("llama"))
    with StreamedCheckpoint(folder) as checkpoint:
        layers = checkpoint.layers
        assert all(p.is_meta for layer in layers for p in layer.parameters())
        assert not checkpoint.model.get_input_embeddings().weight.is_meta
        with checkpoint.layer(1) as layer:
            assert not any(p.is_meta for p in layer.parameters())
            assert all(p.is_meta for p in layers[0].parameters())
        assert all(p.is_meta for p in layers[1].parameters())


def test_stream_scores_refuses_unknown_kinds_and_folders_without_safetensors(tmp_path):
    folder = saved(tmp_path, tiny_model("llama"))
    with pytest.raises(PruningError, match="unknown streamed score kinds"):
        stream_scores(folder, batches(), ("heads", "gradient"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(PruningError):
        stream_scores(folder, batches(), ("heads",))


def test_streamed_perplexity_is_the_loaded_models(tmp_path):
    from hfprune.streaming import streamed_perplexity
    from hfprune.tasks.lm import perplexity

    model = tiny_model("llama")
    hfprune.prune_ffn(model, {0: list(range(5))})
    folder = saved(tmp_path, model)
    data = batches()
    expected = perplexity(hfprune.from_pretrained(folder), data)
    assert streamed_perplexity(folder, data, max_memory=0) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method", ["least_squares", "scales"])
def test_streamed_reconstruction_is_the_in_memory_one(tmp_path, method):
    """Refitting a pruned checkpoint on disk against the dense one gives the weights `hfprune.reconstruct` gives
    in memory (a dropped layer, fewer heads and neurons); its shards are rewritten in place, whole."""
    from hfprune.streaming import stream_reconstruct

    dense_dir = saved(tmp_path, tiny_model("llama"), "dense")
    pruned = tiny_model("llama")
    hfprune.prune_heads(pruned, {0: [0, 1]})
    hfprune.prune_ffn(pruned, {1: list(range(10)), 2: list(range(5))})
    hfprune.drop_layers(pruned, [1])
    pruned_dir = saved(tmp_path, pruned, "pruned", max_shard_size="8KB")
    data = batches(4)
    in_memory = hfprune.from_pretrained(pruned_dir)  # read before the folder is rewritten
    expected = hfprune.reconstruct(in_memory, hfprune.from_pretrained(dense_dir), data, method=method)

    report = stream_reconstruct(pruned_dir, dense_dir, data, method=method, max_memory=0)

    streamed = hfprune.from_pretrained(pruned_dir)
    for (name, weight), reference in zip(streamed.state_dict().items(), in_memory.state_dict().values()):
        assert torch.allclose(weight, reference, rtol=1e-5, atol=1e-6), name
    assert not torch.equal(streamed.model.layers[0].self_attn.o_proj.weight, pruned.model.layers[0].self_attn.o_proj.weight)
    assert [(b.layer, b.block) for b in report.blocks] == [(b.layer, b.block) for b in expected.blocks]
    assert [b.error_after for b in report.blocks] == pytest.approx([b.error_after for b in expected.blocks], rel=1e-4)
    assert report.mean_error_after < report.mean_error_before
    assert len(list(pruned_dir.glob("model-*.safetensors"))) > 1 and not list(pruned_dir.glob(".*"))


def test_a_checkpoint_with_tied_embeddings_streams(tmp_path):
    """SmolLM2, Llama-3.2, Qwen2.5 and Gemma store their head as the embeddings: the streamed model ties them too."""
    from hfprune.streaming import streamed_perplexity
    from hfprune.tasks.lm import perplexity

    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    folder = saved(tmp_path, model)
    with StreamedCheckpoint(folder) as checkpoint:
        assert checkpoint.model.lm_head.weight is checkpoint.model.get_input_embeddings().weight
    data = batches()
    assert streamed_perplexity(folder, data) == pytest.approx(perplexity(hfprune.from_pretrained(folder), data), rel=1e-5)
