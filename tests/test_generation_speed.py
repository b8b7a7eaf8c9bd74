"""Prefill / decode timing of decoders: the timed path is real greedy generation, pruned or not."""

import pytest
import torch
from conftest import tiny_inputs, tiny_model

from hfprune import drop_layers, prune_ffn, prune_heads
from hfprune.errors import PruningError
from hfprune.measure.generation_speed import _prefill_and_decode, measure_generation_speed


def pruned_llama():
    model = tiny_model("llama")
    prune_heads(model, {0: [0, 1, 2, 3], 2: [2, 3]})  # layer 0 keeps no attention at all
    prune_ffn(model, {1: list(range(8))})
    drop_layers(model, [1])
    return model


@pytest.mark.parametrize("make", [lambda: tiny_model("llama"), pruned_llama, lambda: tiny_model("gpt2")])
def test_the_timed_decode_is_greedy_generation(make):
    model = make()
    inputs = {key: value[:1] for key, value in tiny_inputs().items()}  # one unpadded prompt
    prefill, decode, state = _prefill_and_decode(model, inputs, new_tokens=5)
    with torch.inference_mode():
        prefill()
        decode()
        expected = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(torch.cat(state["tokens"], dim=1), expected[:, inputs["input_ids"].shape[1] :])


def test_rows_compare_prefill_and_decode_with_the_first_model():
    dense, pruned = tiny_model("llama"), pruned_llama()
    rows = measure_generation_speed({"dense": dense, "pruned": pruned}, batch_size=2, prompt_len=8, new_tokens=4, repeats=3, num_threads=1)
    assert [row["model"] for row in rows] == ["dense", "pruned"]
    assert rows[0]["prefill_speedup"] == rows[0]["decode_speedup"] == 1.0
    for row in rows:
        assert row["prefill_p25_ms"] <= row["prefill_ms"] <= row["prefill_p75_ms"]
        assert row["prefill_tokens_per_s"] == pytest.approx(2 * 8 / (row["prefill_ms"] / 1e3))
        assert row["decode_tokens_per_s"] == pytest.approx(2 * 3 / (row["decode_ms"] / 1e3))
    assert not dense.training and not pruned.training  # modes restored (both were in eval mode)
    with pytest.raises(PruningError, match="new_tokens"):
        measure_generation_speed({"dense": dense}, new_tokens=0)
