"""Issue 10, the engine: surgery is all or nothing and never misreads its input; checkpoints that disagree
with themselves are refused on load. Every test here failed (or gave a silently wrong model) before."""

import copy
import gc
import json
import weakref

import numpy as np
import pytest
import torch
import transformers
from conftest import logits_of, tiny_inputs, tiny_model
from test_surgery import assert_close
from torch import nn

import hfprune

BERT_HEADS = {0: [1, 3], 2: [0, 1, 2, 3]}
FFN = {0: [0, 5, 7], 1: list(range(0, 24, 2))}


def masked_logits(model, inputs, heads=None, ffn=None, layers=None):
    masks = {}
    if heads is not None:
        masks["head_mask"] = hfprune.make_head_mask(model, heads)
    if ffn is not None:
        masks["ffn_mask"] = hfprune.make_ffn_mask(model, ffn)
    if layers is not None:
        masks["layer_mask"] = hfprune.make_layer_mask(model, layers)
    with hfprune.apply_masks(model, **masks):
        return logits_of(model, inputs)


def snapshot(model):
    return {
        "state": {key: value.clone() for key, value in model.state_dict().items()},
        "record": copy.deepcopy(getattr(model.config, "hfprune", None)),
        "config": model.config.to_dict(),
        "modules": [(name, type(module)) for name, module in model.named_modules()],
    }


def assert_unchanged(model, before):
    state = model.state_dict()
    assert state.keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert state[key].shape == value.shape and torch.equal(state[key], value), key
    assert getattr(model.config, "hfprune", None) == before["record"]
    assert model.config.to_dict() == before["config"]
    assert [(name, type(module)) for name, module in model.named_modules()] == before["modules"]


# ---- wrapped models -----------------------------------------------------------------------------------
def test_torch_compile_model_is_pruned_through_its_wrapper():
    model, inputs = tiny_model("bert"), tiny_inputs()
    expected = masked_logits(model, inputs, heads=BERT_HEADS, ffn=FFN, layers=[1])
    compiled = torch.compile(model, backend="eager")
    dense = logits_of(compiled, inputs)
    assert hfprune.prune_heads(compiled, BERT_HEADS) is compiled
    hfprune.prune_ffn(compiled, FFN)
    hfprune.drop_layers(compiled, [1])
    record = model.config.hfprune
    assert record["kept_layers"] == [0, 2] and record["kept_heads"] == [[0, 2], []]
    assert_close(logits_of(model, inputs), expected)
    # The compiled wrapper guards on the new shapes and recompiles: it computes the pruned model too.
    assert_close(logits_of(compiled, inputs), expected)
    assert (dense - expected).abs().max() > 1e-3
    # A second call trusts a record that matches the weights: pruning head 0 of layer 0 removes head 0.
    hfprune.prune_heads(compiled, {0: [0]})
    assert model.config.hfprune["kept_heads"][0] == [2]
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape[0] == 8


def test_masks_refuse_a_compiled_model():
    model = tiny_model("bert")
    compiled = torch.compile(model, backend="eager")
    mask = hfprune.make_head_mask(compiled, {0: [1]})  # building a mask reads only the config
    with pytest.raises(hfprune.PruningError, match="torch.compile"):
        hfprune.apply_masks(compiled, head_mask=mask)
    with pytest.raises(hfprune.PruningError, match="torch.compile"):
        with hfprune.skip_layers(compiled, [1]):
            pass


def test_data_parallel_is_pruned_through_its_wrapper():
    model, inputs = tiny_model("bert"), tiny_inputs()
    expected = masked_logits(model, inputs, heads=BERT_HEADS)
    wrapped = nn.DataParallel(model)  # replicates `module` on every forward: it sees the surgery
    assert hfprune.prune_heads(wrapped, BERT_HEADS) is wrapped
    assert_close(logits_of(wrapped, inputs), expected)


def test_ddp_is_refused_before_anything_changes(tmp_path):
    import torch.distributed as dist

    model = tiny_model("bert")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        before = snapshot(model)
        with pytest.raises(hfprune.PruningError, match=r"DistributedDataParallel wrapper.*\.module") as error:
            hfprune.prune_heads(wrapped, BERT_HEADS)
        assert "\n" not in str(error.value)
        assert_unchanged(model, before)
        # Masks are hooks on the inner modules, which DDP's forward runs: they apply.
        expected = masked_logits(model, tiny_inputs(), heads=BERT_HEADS)
        with hfprune.apply_masks(wrapped, head_mask=hfprune.make_head_mask(wrapped, BERT_HEADS)):
            assert_close(logits_of(wrapped, tiny_inputs()), expected)
    finally:
        dist.destroy_process_group()


def _lora_model(model):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    with torch.no_grad():  # B starts at zero; make the adapters change the output
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return lora.eval()


@pytest.mark.parametrize(
    "call",
    [
        lambda m: hfprune.prune_heads(m, BERT_HEADS),
        lambda m: hfprune.prune_ffn(m, FFN),
        lambda m: hfprune.drop_layers(m, [1]),
    ],
    ids=["heads", "ffn", "layers"],
)
def test_peft_lora_model_is_refused_before_anything_changes(call):
    lora = _lora_model(tiny_model("bert"))
    before = snapshot(lora)
    with pytest.raises(hfprune.PruningError, match=r"PEFT adapters.*merge_and_unload\(\)") as error:
        call(lora)
    assert "\n" not in str(error.value)
    assert_unchanged(lora, before)
    with pytest.raises(hfprune.PruningError, match="merge_and_unload"):
        call(lora.get_base_model())  # adapters injected into the transformers model itself


def test_peft_lora_masks_apply_and_merged_model_prunes():
    inputs = tiny_inputs()
    lora = _lora_model(tiny_model("bert"))
    masked_lora = masked_logits(lora, inputs, heads=BERT_HEADS, ffn=FFN)
    merged = lora.merge_and_unload()
    assert_close(masked_logits(merged, inputs, heads=BERT_HEADS, ffn=FFN), masked_lora)
    hfprune.prune_heads(merged, BERT_HEADS)
    hfprune.prune_ffn(merged, FFN)
    assert_close(logits_of(merged, inputs), masked_lora)


# ---- all or nothing -------------------------------------------------------------------------------------
def _fail_on_second_call(monkeypatch, owner, name):
    original = getattr(owner, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return calls


FAULTS = {
    # (adapter method that fails on its 2nd call, kind, spec): the first call has already changed a layer
    "heads": ("slice_heads", "heads", {0: [0, 1], 1: [2, 3], 2: [0, 1]}),
    "heads-after-empty": ("slice_heads", "heads", {0: [0, 1, 2, 3], 1: [2, 3], 2: [2, 3]}),
    "ffn": ("slice_ffn", "ffn", FFN),
}


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "xlnet"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("hold_parameters", [False, True], ids=["rebuilt", "same-objects"])
def test_a_fault_mid_surgery_rolls_everything_back(family, fault, hold_parameters, monkeypatch):
    model, inputs = tiny_model(family), tiny_inputs()
    hfprune.prune_ffn(model, {2: [1, 2]})  # a record exists already: it must survive unchanged too
    dense = logits_of(model, inputs)
    before = snapshot(model)
    held = dict(model.named_parameters()) if hold_parameters else None
    method, kind, spec = FAULTS[fault]
    call = hfprune.prune_heads if kind == "heads" else hfprune.prune_ffn
    _fail_on_second_call(monkeypatch, type(hfprune.get_adapter(model)), method)
    with pytest.raises(RuntimeError, match="injected fault"):
        call(model, spec)
    monkeypatch.undo()
    assert_unchanged(model, before)
    assert torch.equal(logits_of(model, inputs), dense)
    if held is not None:  # parameters someone still holds (an optimizer) are the model's again
        assert all(parameter is held[name] for name, parameter in model.named_parameters())
    # The model is still fully usable: the same call now succeeds and equals the masked model.
    expected = masked_logits(model, inputs, **{kind: spec})
    call(model, spec)
    assert_close(logits_of(model, inputs), expected)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_fault_while_recording_rolls_back_config_and_layers(error, monkeypatch):
    model = tiny_model("llama")
    model.config.layer_types = ["full_attention"] * 3
    hfprune.prune_heads(model, {1: [0, 1]})
    before = snapshot(model)

    seen = []

    def failing_patch(*args, **kwargs):  # save_record has already rewritten config fields by now
        seen.append((model.config.num_hidden_layers, model.config.hfprune))
        raise error("injected fault")

    monkeypatch.setattr(hfprune.engine.record, "structure_patch", failing_patch)
    with pytest.raises(error):
        hfprune.drop_layers(model, [0])
    with pytest.raises(error):
        hfprune.prune_ffn(model, {0: [1], 2: [3]})
    assert seen == [(2, None), (3, None)]
    assert_unchanged(model, before)
    assert model.config.layer_types == ["full_attention"] * 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]


def test_old_weights_are_freed_after_a_successful_call():
    model = tiny_model("llama")
    old = weakref.ref(model.model.layers[0].self_attn.q_proj.weight)
    hfprune.prune_heads(model, {0: [0, 1]})
    gc.collect()
    assert old() is None  # nothing (no undo journal) keeps a second copy of the weights alive


# ---- indices --------------------------------------------------------------------------------------------
BAD_INDICES = {
    "float tensor": torch.tensor([1.7]),
    "integral float tensor": torch.tensor([1.0]),
    "float": [1.0],
    "numpy float": np.array([1.5]),
    "numpy float scalar": [np.float32(1.0)],
    "bool tensor": torch.tensor([True, False, True, False]),
    "bool list": [True, False, True, False],
    "numpy bool": np.array([True, False]),
    "2-d tensor": torch.tensor([[1, 2]]),
    "negative": [-1],
    "negative tensor": torch.tensor([-1]),
    "0-d float tensor": [torch.tensor(1.0)],
    "0-d bool tensor": [torch.tensor(True)],
}


@pytest.mark.parametrize("kind", sorted(BAD_INDICES))
def test_bad_indices_are_refused_by_surgery_and_mask_builders_alike(kind):
    model, values = tiny_model("bert"), BAD_INDICES[kind]
    before = snapshot(model)
    calls = {
        "heads": (lambda: hfprune.prune_heads(model, {0: values}), lambda: hfprune.make_head_mask(model, {0: values})),
        "ffn": (lambda: hfprune.prune_ffn(model, {0: values}), lambda: hfprune.make_ffn_mask(model, {0: values})),
    }
    for surgery_call, mask_call in calls.values():
        with pytest.raises(hfprune.PruningError) as surgery_error:
            surgery_call()
        with pytest.raises(hfprune.PruningError) as mask_error:
            mask_call()
        assert str(surgery_error.value) == str(mask_error.value)
        assert "\n" not in str(surgery_error.value)
    layer_calls = (
        lambda: hfprune.drop_layers(model, values),
        lambda: hfprune.make_layer_mask(model, values),
        lambda: hfprune.skip_layers(model, values).__enter__(),
    )
    messages = set()
    for call in layer_calls:
        with pytest.raises(hfprune.PruningError) as error:
            call()
        messages.add(str(error.value).replace("layers_to_skip", "layers").replace("layers_to_drop", "layers"))
    assert len(messages) == 1
    assert_unchanged(model, before)


@pytest.mark.parametrize("key", [torch.tensor(0.0), torch.tensor(True), 0.0, True, np.float64(0)], ids=repr)
def test_bad_layer_keys_are_refused(key):
    model = tiny_model("bert")
    before = snapshot(model)
    for call in (hfprune.prune_heads, hfprune.make_head_mask):
        with pytest.raises(hfprune.PruningError, match="layer"):
            call(model, {key: [1]})
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "spec",
    [
        {torch.tensor(0): torch.tensor([1, 3]), np.int64(2): np.array([0, 1, 2, 3])},
        {0: [torch.tensor(1), np.int32(3)], 2: torch.arange(4, dtype=torch.int32)},
        {torch.tensor(0): [1], 0: [3], 2: range(4)},  # two keys naming layer 0: the union is pruned
        {np.int64(0): [3], 0: torch.tensor([1, 3]), 2: [0, 1], torch.tensor(2): [2, 3]},
    ],
    ids=["tensor-keys", "tensor-elements", "duplicate-tensor-key", "numpy-key-and-duplicate-tensor-key"],
)
def test_integer_tensors_and_duplicate_keys_mean_the_plain_spec(spec):
    model, inputs = tiny_model("bert"), tiny_inputs()
    expected = masked_logits(model, inputs, heads=BERT_HEADS)
    assert torch.equal(hfprune.make_head_mask(model, spec), hfprune.make_head_mask(model, BERT_HEADS))
    hfprune.prune_heads(model, spec)
    assert model.config.hfprune["kept_heads"] == [[0, 2], [0, 1, 2, 3], []]
    assert_close(logits_of(model, inputs), expected)


def test_drop_layers_and_skip_layers_read_tensors_alike():
    model, inputs = tiny_model("gpt2"), tiny_inputs()
    with hfprune.skip_layers(model, torch.tensor([1])):
        expected = logits_of(model, inputs)
    assert torch.equal(hfprune.make_layer_mask(model, np.array([1])), hfprune.make_layer_mask(model, [1]))
    hfprune.drop_layers(model, [torch.tensor(1), np.int64(1)])
    assert model.config.hfprune["kept_layers"] == [0, 2]
    assert_close(logits_of(model, inputs), expected)


# ---- records that disagree with the model ---------------------------------------------------------------
def test_a_stale_record_is_refused_instead_of_pruning_the_wrong_heads():
    model = tiny_model("bert")
    hfprune.prune_heads(model, {0: [1]})
    model.config.hfprune["kept_heads"][0] = [0, 1, 2, 3]  # what a half-done call used to leave behind
    before = snapshot(model)
    for call in (
        lambda: hfprune.prune_heads(model, {0: [1]}),
        lambda: hfprune.prune_ffn(model, {0: [1]}),
        lambda: hfprune.apply_masks(model, head_mask=torch.ones(3, 4)),
    ):
        with pytest.raises(hfprune.PruningError, match="disagrees with the weights of layer 0") as error:
            call()
        assert "\n" not in str(error.value)
    assert_unchanged(model, before)


# ---- checkpoints that disagree with themselves ------------------------------------------------------------
def _edit_config(path, edit):
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))


def _saved(tmp_path, prune=True, family="bert"):
    model = tiny_model(family)
    if prune:
        hfprune.prune_heads(model, {0: [1]})
        hfprune.prune_ffn(model, {1: [0, 1]})
    model.save_pretrained(tmp_path)
    return model


def _refused(path, match, **kwargs):
    with pytest.raises(hfprune.PruningError, match=match) as error:
        hfprune.from_pretrained(path, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("pruned", [False, True], ids=["stock", "pruned"])
@pytest.mark.parametrize("model_class", [None, transformers.AutoModel, transformers.BertForSequenceClassification])
def test_a_config_claiming_more_layers_than_the_weights_is_refused(tmp_path, pruned, model_class):
    _saved(tmp_path, prune=pruned)

    def more_layers(config):
        config["num_hidden_layers"] = 4
        if pruned:  # edited consistently: the record also claims a fourth layer
            record = config["hfprune"]
            record["original"]["num_layers"] = 4
            for key, value in (("kept_layers", 3), ("kept_heads", [0, 1, 2, 3]), ("kept_ffn", None)):
                record[key].append(value)

    _edit_config(tmp_path, more_layers)
    _refused(tmp_path, r"no weights for .* layer\(s\) \[3\].*4 layers", model_class=model_class)


def test_a_record_claiming_another_layer_count_than_the_config_is_refused(tmp_path):
    _saved(tmp_path)
    _edit_config(tmp_path, lambda config: config.update(num_hidden_layers=4))
    _refused(tmp_path, "keeps 3 layers but the config says 4")


def test_a_record_that_disagrees_with_the_weights_is_refused(tmp_path):
    _saved(tmp_path)

    def claim_all_heads(config):
        config["hfprune"]["kept_heads"][0] = [0, 1, 2, 3]

    _edit_config(tmp_path, claim_all_heads)
    _refused(tmp_path, r"disagrees with the weights of layer 0 .* 4 query heads.* 3 query heads")


def test_weights_that_disagree_with_the_config_are_refused_even_when_mismatches_are_reinitialised(tmp_path):
    _saved(tmp_path, prune=False)
    _edit_config(tmp_path, lambda config: config.update(intermediate_size=20))
    # The pipeline loads with ignore_mismatched_sizes=True (for a new classifier): never for a layer weight.
    _refused(tmp_path, r"disagrees with the weights: bert\.encoder\.layer\.0\..* \[24", ignore_mismatched_sizes=True)
    _refused(tmp_path, "disagrees with the weights")


def test_weights_a_pruned_record_has_no_place_for_are_refused(tmp_path):
    _saved(tmp_path, prune=False, family="llama")

    def claim_layer_2_lost_its_attention(config):
        model = tiny_model("llama")
        hfprune.prune_heads(model, {2: [0, 1, 2, 3]})
        config["hfprune"] = model.config.hfprune

    _edit_config(tmp_path, claim_layer_2_lost_its_attention)
    _refused(tmp_path, r"no place for \(e\.g\. model\.layers\.2\.self_attn\.")


def test_a_new_classifier_still_loads_when_asked_and_is_named_otherwise(tmp_path):
    model = _saved(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    config.num_labels = 5
    reloaded, info = hfprune.from_pretrained(
        tmp_path, config=config, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {key for key, *_ in info["mismatched_keys"]} == {"classifier.weight", "classifier.bias"}
    for key, value in model.bert.state_dict().items():
        assert torch.equal(reloaded.bert.state_dict()[key], value)
    _refused(tmp_path, r"classifier\.(weight|bias) is .*ignore_mismatched_sizes=True", config=config)


def _set(path, value):
    def edit(config):
        target = config["hfprune"]
        *parents, last = path
        for key in parents:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return edit


CORRUPT = {
    "not a dict": (lambda config: config.update(hfprune="abc"), "expected a dict"),
    "a list": (lambda config: config.update(hfprune=[1, 2]), "expected a dict"),
    "no kept_ffn": (_set(["kept_ffn"], KeyError), "missing kept_ffn"),
    "no original": (_set(["original"], KeyError), "missing original"),
    "original not sizes": (_set(["original", "num_heads"], "4"), "original must give positive integers"),
    "head out of range": (_set(["kept_heads", 1], [0, 9]), r"kept_heads\[1\] has index 9, outside \[0, 4\)"),
    "negative head": (_set(["kept_heads", 1], [-1, 0]), "outside"),
    "float heads": (_set(["kept_heads", 1], [0.0, 1.0]), "list of integers"),
    "heads not a list": (_set(["kept_heads", 1], "0,1"), "list of integers"),
    "unsorted heads": (_set(["kept_heads", 1], [2, 1]), "sorted"),
    "short kept_heads": (_set(["kept_heads"], [[0, 2, 3], [0, 1, 2, 3]]), "one entry per kept layer"),
    "kept_ffn not a list": (_set(["kept_ffn"], None), "one entry per kept layer"),
    "ffn entry a string": (_set(["kept_ffn", 0], "all"), "list of integers"),
    "ffn out of range": (_set(["kept_ffn", 1], [30]), "outside"),
    "layer ids strings": (_set(["kept_layers"], ["0", "1", "2"]), "list of integers"),
    "layer out of range": (_set(["kept_layers"], [0, 1, 7]), "outside"),
    "patch not a list": (_set(["patch"], {"a": 1}), "patch must be a list"),
    "patch entry junk": (_set(["patch", 0], 3), r"patch\[0\] must be a dict"),
    "patch unknown module": (
        _set(["patch", 0], {"path": "encoder.layer.0", "module": "Linear", "kwargs": {}}),
        "module must be one of",
    ),
    "patch bad path": (_set(["patch", 0, "path"], "encoder.layer.9.attention.self"), r"patch\[0\] .*does not fit"),
    "patch bad shape": (_set(["patch", 2, "shape"], [-3, 32]), "shape of non-negative integers"),
    "stock_loadable junk": (_set(["stock_loadable"], "yes"), "stock_loadable"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_record_is_one_pruning_error(tmp_path, kind):
    _saved(tmp_path)
    edit, match = CORRUPT[kind]
    _edit_config(tmp_path, edit)
    _refused(tmp_path, match)
    # The same record on a model in memory stops surgery and masks too (before anything changes).
    model = tiny_model("bert")
    model.config.hfprune = transformers.AutoConfig.from_pretrained(tmp_path).hfprune
    before = snapshot(model)
    for call in (
        lambda: hfprune.prune_heads(model, {0: [0]}),
        lambda: hfprune.drop_layers(model, [0]),
        lambda: hfprune.make_head_mask(model, {0: [0]}),
    ):
        with pytest.raises(hfprune.PruningError):
            call()
    assert_unchanged(model, before)


def test_a_truncated_safetensors_file_is_refused(tmp_path):
    _saved(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _refused(tmp_path, "model.safetensors is truncated or corrupt")


def test_a_folder_without_weights_is_refused(tmp_path):
    _saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    _refused(tmp_path, "holds no model weights")


def test_a_sharded_checkpoint_with_a_missing_shard_is_refused(tmp_path):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert hfprune.from_pretrained(tmp_path).config.num_hidden_layers == 3  # complete: loads
    shards[-1].unlink()
    _refused(tmp_path, "is missing")


def test_an_auto_class_without_the_model_type_is_a_pruning_error(tmp_path):
    _saved(tmp_path, family="distilbert")
    message = "AutoModelForCausalLM has no model class for model type 'distilbert'"
    _refused(tmp_path, message, model_class=transformers.AutoModelForCausalLM)
