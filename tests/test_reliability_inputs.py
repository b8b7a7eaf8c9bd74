"""Issue 24: bad inputs that gave a silently wrong result, a crash or lost data. Each test failed before its fix."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import logits_of, tiny_inputs, tiny_model

import hfprune
from hfprune.engine.restore import restore_structure
from hfprune.training.callbacks import HeadMaskCallback


# ---- 1. a mask applied while surgery runs follows it -------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_a_head_mask_follows_surgery_made_under_it(family):
    """Pruning heads {0, 1} of layer 0 under a mask of its head 3 is pruning {0, 1, 3}: the mask keeps naming
    original head 3 after the surgery renumbered the layer's heads."""
    model, reference, inputs = tiny_model(family), tiny_model(family), tiny_inputs()
    with hfprune.apply_masks(model, head_mask=hfprune.make_head_mask(model, {0: [3]})):
        hfprune.prune_heads(model, {0: [0, 1]})
        got = logits_of(model, inputs)
    hfprune.prune_heads(reference, {0: [0, 1, 3]})
    torch.testing.assert_close(got, logits_of(reference, inputs), atol=1e-5, rtol=0)
    unmasked = hfprune.prune_heads(tiny_model(family), {0: [0, 1]})
    torch.testing.assert_close(logits_of(model, inputs), logits_of(unmasked, inputs), atol=1e-5, rtol=0)  # hooks gone


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_ffn_and_layer_masks_follow_surgery_and_a_rollback(family, monkeypatch):
    model, reference, inputs = tiny_model(family), tiny_model(family), tiny_inputs()
    masks = {"ffn_mask": hfprune.make_ffn_mask(model, {1: [5, 9], 2: [3]}), "layer_mask": hfprune.make_layer_mask(model, [2])}
    with hfprune.apply_masks(model, **masks):
        hfprune.drop_layers(model, [0])
        hfprune.prune_ffn(model, {1: [0, 1, 2]})
        before_fault = logits_of(model, inputs)
        def fault(*args):
            raise RuntimeError("fault")

        from hfprune.engine import surgery

        monkeypatch.setattr(surgery, "save_record", fault)
        with pytest.raises(RuntimeError, match="fault"):  # a call that fails half-way puts the old record back
            hfprune.prune_ffn(model, {1: [4, 6]})
        monkeypatch.undo()
        torch.testing.assert_close(logits_of(model, inputs), before_fault, atol=0, rtol=0)
        got = before_fault
    hfprune.drop_layers(reference, [0, 2])
    hfprune.prune_ffn(reference, {1: [0, 1, 2, 5, 9]})
    torch.testing.assert_close(got, logits_of(reference, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_head_mask_callback_masks_evaluation_after_a_pruning_step(family):
    model, reference, inputs = tiny_model(family), tiny_model(family), tiny_inputs()
    callback = HeadMaskCallback({0: [3], 1: [2]} if family != "llama" else {0: [3], 1: [2, 3]})
    callback.attach(model)
    hfprune.prune_heads(model, {0: [0, 1], 1: [0]} if family != "llama" else {0: [0, 1]})
    model.eval()
    got = logits_of(model, inputs)
    callback.remove()
    hfprune.prune_heads(reference, {0: [0, 1, 3], 1: [0, 2]} if family != "llama" else {0: [0, 1, 3], 1: [2, 3]})
    torch.testing.assert_close(got, logits_of(reference, inputs), atol=1e-5, rtol=0)


def test_a_mask_on_a_layer_that_lost_every_head_leaves_it_alone():
    model, reference, inputs = tiny_model("bert"), tiny_model("bert"), tiny_inputs()
    with hfprune.apply_masks(model, head_mask=hfprune.make_head_mask(model, {0: [3], 1: [0]})):
        hfprune.prune_heads(model, {0: [0, 1, 2, 3]})
        got = logits_of(model, inputs)
    hfprune.prune_heads(reference, {0: [0, 1, 2, 3], 1: [0]})
    torch.testing.assert_close(got, logits_of(reference, inputs), atol=1e-5, rtol=0)


# ---- 2. the ONNX check sees NaN ---------------------------------------------------------------------------
def test_an_onnx_export_whose_outputs_are_nan_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    from hfprune.export.onnx import OnnxMismatchError, export_onnx

    model = tiny_model("bert")
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(OnnxMismatchError, match="PyTorch's logits holds NaN or inf") as error:
        export_onnx(model, tmp_path / "onnx")
    assert "\n" not in str(error.value) and not (tmp_path / "onnx").exists()


def test_onnxruntime_outputs_that_are_nan_are_a_mismatch(tmp_path, monkeypatch):
    onnxruntime = pytest.importorskip("onnxruntime")
    import numpy as np

    from hfprune.export.onnx import OnnxMismatchError, export_onnx

    real = onnxruntime.InferenceSession

    class NanSession(real):
        def run(self, *args, **kwargs):
            return [np.full_like(output, np.nan) for output in super().run(*args, **kwargs)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", NanSession)
    with pytest.raises(OnnxMismatchError, match="onnxruntime's logits holds NaN or inf"):
        export_onnx(tiny_model("gpt2"), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


# ---- 5. the record has a format version; 6. and the model type it was made for --------------------------
def _saved_pruned(path, family="bert"):
    model = tiny_model(family)
    hfprune.prune_heads(model, {0: [1]})
    model.save_pretrained(path)
    return model


def _edit_record(path, edit):
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    edit(config["hfprune"])
    config_path.write_text(json.dumps(config))


def _one_line_refusal(call, match):
    with pytest.raises(hfprune.PruningError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_surgery_writes_the_record_format_version_and_model_type(tmp_path):
    from hfprune.engine.record import RECORD_VERSION

    model = _saved_pruned(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["hfprune"]
    assert saved["version"] == RECORD_VERSION == 1 and saved["model_type"] == "bert"
    assert hfprune.from_pretrained(tmp_path).config.hfprune == model.config.hfprune


def test_a_record_of_an_older_hfprune_without_version_still_loads_and_prunes(tmp_path):
    _saved_pruned(tmp_path)
    _edit_record(tmp_path, lambda record: [record.pop("version"), record.pop("model_type")])
    model = hfprune.from_pretrained(tmp_path)
    hfprune.prune_heads(model, {1: [0]})
    assert model.config.hfprune["version"] == 1 and model.config.hfprune["kept_heads"][1] == [1, 2, 3]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda record: record.update(version=99), r"record format version 99, newer than this hfprune reads \(1\): upgrade"),
        (lambda record: record.update(version=99, future_field=[1]), "upgrade hfprune"),
        (lambda record: record.update(kept_experts=[[0]]), r"unknown key\(s\) kept_experts"),
        (lambda record: record.update(version="1"), "version must be a positive integer"),
        (lambda record: record.update(version=0), "version must be a positive integer"),
        (lambda record: record.update(model_type=3), "model_type must be a string"),
        (lambda record: record.update(model_type="roberta"), "made for a 'roberta' model, but this is a 'bert' model"),
    ],
    ids=["newer", "newer-with-new-keys", "unknown-key", "version-string", "version-zero", "model-type-junk", "other-type"],
)
def test_a_record_of_a_newer_format_another_model_type_or_unknown_keys_is_refused(tmp_path, edit, match):
    _saved_pruned(tmp_path)
    _edit_record(tmp_path, edit)
    _one_line_refusal(lambda: hfprune.from_pretrained(tmp_path), match)
    # the same record in memory stops surgery, masks and restore_structure too
    record = json.loads((tmp_path / "config.json").read_text())["hfprune"]
    model = tiny_model("bert")
    hfprune.prune_heads(model, {0: [1]})
    model.config.hfprune = record
    _one_line_refusal(lambda: hfprune.prune_heads(model, {0: [2]}), match)
    _one_line_refusal(lambda: hfprune.make_head_mask(model, {0: [2]}), match)
    _one_line_refusal(lambda: restore_structure(tiny_model("bert"), record), match)


def test_restore_structure_refuses_a_record_made_for_another_model_type():
    bert = tiny_model("bert")
    hfprune.prune_heads(bert, {0: [1]})
    roberta = tiny_model("roberta")  # the same sizes: only the model type tells them apart
    _one_line_refusal(
        lambda: restore_structure(roberta, bert.config.hfprune), "made for a 'bert' model, but this is a 'roberta'"
    )
    assert not getattr(roberta.config, "hfprune", None)


def test_a_bert_pruning_checkpoint_does_not_resume_into_roberta(tmp_path):
    from conftest import VOCAB, tiny_pruning_args
    from transformers import default_data_collator

    from hfprune.training.trainer import PruningTrainer

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (16, 8), generator=generator)
    train = [{"input_ids": row, "attention_mask": torch.ones(8, dtype=torch.long), "labels": int(row[0] % 3)} for row in ids]
    args = tiny_pruning_args(
        tmp_path / "out", target_head_sparsity=0.5, recovery_steps=1, recovery_epochs=0.0, save_strategy="steps", save_steps=1
    )

    def trainer(model):
        return PruningTrainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator)

    trainer(tiny_model("bert")).train()
    roberta = tiny_model("roberta")
    _one_line_refusal(lambda: trainer(roberta).train(resume_from_checkpoint=True), "made for a 'bert' model")


# ---- 3. a weight that would load randomly initialised; a flipped tie --------------------------------------------
def _drop_weight(path, key):
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    del weights[key]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def _edit_config(path, **fields):
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("family, key", [("bert", "classifier.weight"), ("llama", "lm_head.weight"), ("bert", "bert.pooler.dense.bias")])
def test_a_checkpoint_missing_a_head_weight_is_refused(tmp_path, family, key):
    tiny_model(family).save_pretrained(tmp_path)
    _drop_weight(tmp_path, key)
    _one_line_refusal(lambda: hfprune.from_pretrained(tmp_path), rf"no weights for 1 parameter\(s\) of .* \(e\.g\. {key}\)")


def test_a_weight_missing_from_the_index_of_a_sharded_checkpoint_is_refused(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path, max_shard_size="20KB")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].pop("classifier.weight")
    index_path.write_text(json.dumps(index))
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / shard)
    del weights["classifier.weight"]
    save_file(weights, tmp_path / shard, metadata={"format": "pt"})
    _one_line_refusal(lambda: hfprune.from_pretrained(tmp_path), r"no weights for .*classifier\.weight")


def test_a_tie_flipped_by_hand_is_refused(tmp_path):
    tiny_model("gpt2").save_pretrained(tmp_path / "gpt2")  # tied: the file has no lm_head.weight
    _edit_config(tmp_path / "gpt2", tie_word_embeddings=False)
    _one_line_refusal(
        lambda: hfprune.from_pretrained(tmp_path / "gpt2"),
        r"lm_head\.weight.*tie_word_embeddings: false.*set tie_word_embeddings to true",
    )
    tiny_model("llama").save_pretrained(tmp_path / "llama")  # untied: the file has its own lm_head.weight
    _edit_config(tmp_path / "llama", tie_word_embeddings=True)
    _one_line_refusal(
        lambda: hfprune.from_pretrained(tmp_path / "llama"),
        r"tie_word_embeddings: true, but the checkpoint holds a separate lm_head\.weight that differs",
    )


def test_a_tied_checkpoint_that_saved_both_equal_matrices_and_a_new_head_still_load(tmp_path):
    import transformers
    from safetensors.torch import load_file, save_file

    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "gpt2")
    weights = load_file(tmp_path / "gpt2" / "model.safetensors")
    weights["lm_head.weight"] = weights["transformer.wte.weight"].clone()  # as older transformers saved it
    save_file(weights, tmp_path / "gpt2" / "model.safetensors", metadata={"format": "pt"})
    torch.testing.assert_close(logits_of(hfprune.from_pretrained(tmp_path / "gpt2"), tiny_inputs()), logits_of(model, tiny_inputs()))
    # a bare encoder loaded for a task gets a new head: its config does not name the class, nothing is refused
    bert = tiny_model("bert")
    bert.bert.save_pretrained(tmp_path / "encoder")
    _, info = hfprune.from_pretrained(
        tmp_path / "encoder", model_class=transformers.AutoModelForSequenceClassification, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}


def test_eval_and_export_refuse_a_checkpoint_missing_its_classifier(tmp_path):
    """`eval` loads through `load_model_for_task`, `export` through `export_onnx`: both refuse it in one line."""
    from cli_fixtures import write_sst2, write_tiny_bert

    from hfprune.io.checkpoint import load_model_for_task
    from hfprune.tasks.task_data import load_task_data

    write_tiny_bert(tmp_path / "bert", with_head=True)
    write_sst2(tmp_path / "glue", n_train=16, n_dev=8)
    data = load_task_data("sst2", data_dir=tmp_path / "glue")
    assert load_model_for_task(str(tmp_path / "bert"), data)[2]  # complete: a trained head
    _drop_weight(tmp_path / "bert", "classifier.weight")
    _one_line_refusal(lambda: load_model_for_task(str(tmp_path / "bert"), data), r"e\.g\. classifier\.weight")
    if importlib.util.find_spec("onnxruntime"):
        from hfprune.export.onnx import export_onnx

        _one_line_refusal(lambda: export_onnx(tmp_path / "bert", tmp_path / "onnx"), r"e\.g\. classifier\.weight")
        assert not (tmp_path / "onnx").exists()


# ---- 7. a hand-edited hidden_size ------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden_size", [30, 48])
def test_a_hand_edited_hidden_size_is_one_line_saying_config_and_weights_disagree(tmp_path, hidden_size):
    from hfprune.errors import PipelineInputError
    from hfprune.io.checkpoint import resolve_model

    tiny_model("llama").save_pretrained(tmp_path)
    _edit_config(tmp_path, hidden_size=hidden_size)
    if hidden_size == 30:  # transformers refuses the config itself (its heads do not divide 30)
        match = r"config\.json and the weights disagree: config\.json says hidden_size 30, the weights' model\.embed_tokens\.weight is \[99, 32\]"
        _one_line_refusal(lambda: resolve_model(str(tmp_path), need_tokenizer=False), match)
        with pytest.raises(PipelineInputError):
            resolve_model(str(tmp_path), need_tokenizer=False)
    else:  # it builds a model 48 wide, which the weights do not fit: named by a base-model weight, no hint to reinit
        match = r"disagrees with the weights: model\.(embed_tokens|layers\.0|norm)\S* is \[(99, )?32\] .* \[(99, )?48\]"
    _one_line_refusal(lambda: hfprune.from_pretrained(tmp_path), match)
    _one_line_refusal(lambda: hfprune.from_pretrained(tmp_path, ignore_mismatched_sizes=True), match)
    with pytest.raises(hfprune.PruningError) as error:
        hfprune.from_pretrained(tmp_path)
    assert "ignore_mismatched_sizes" not in str(error.value)


# ---- 4. results get the umask's permissions --------------------------------------------------------------------
@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_every_file_and_folder_of_a_result_gets_the_umask_permissions(tmp_path, umask_022):
    import tempfile

    from hfprune.io.output import write_atomically

    def write(folder):
        tiny_model("bert").save_pretrained(folder)  # safetensors writes through a 0600 temporary file
        (folder / "sub").mkdir(mode=0o700)
        handle, _ = tempfile.mkstemp(dir=folder / "sub")  # 0600
        os.close(handle)
        script = folder / "run.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o700)

    write_atomically(tmp_path / "out", write)
    modes = {path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "out").rglob("*")}
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert modes.pop("out/model.safetensors") == 0o644
    assert modes.pop("out/sub") == 0o755 and modes.pop("out/run.sh") == 0o755
    assert set(modes.values()) == {0o644}, modes


# ---- 8. two runs writing the same output ---------------------------------------------------------------------------
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _start(code: str, *args) -> subprocess.Popen:
    """A second hfprune process running `code`; it prints 'ready' once it holds what the test is about."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=SUBPROCESS_ENV, text=True,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    return process


WRITER = """
    import sys
    from pathlib import Path
    from hfprune.io.output import write_atomically

    def write(folder):
        (folder / "who").write_text("second process")
        print("ready", flush=True)
        sys.stdin.readline()  # until the test lets it finish

    write_atomically(sys.argv[1], write, overwrite=True)
"""


def test_a_run_that_finishes_leaves_the_working_copy_of_a_live_run_alone(tmp_path):
    from hfprune.io.output import write_atomically

    output = tmp_path / "out"
    live = _start(WRITER, output)
    staging = [path for path in tmp_path.glob(".out.tmp-*")]
    assert len(staging) == 1 and f"tmp-{live.pid}-" in staging[0].name
    write_atomically(output, lambda folder: (folder / "who").write_text("first process"), overwrite=True)
    assert (output / "who").read_text() == "first process" and staging[0].is_dir()  # not deleted under the live run
    live.stdin.write("\n")
    live.stdin.close()
    assert live.wait(60) == 0
    assert (output / "who").read_text() == "second process" and not list(tmp_path.glob(".out.tmp-*"))


def test_the_leftover_of_a_killed_run_is_still_removed(tmp_path):
    from hfprune.io.output import write_atomically

    output = tmp_path / "out"
    killed = _start(WRITER, output)
    killed.kill()
    killed.wait(60)
    assert len(list(tmp_path.glob(".out.tmp-*"))) == 1
    (tmp_path / ".out.tmp-oldname1").mkdir()  # an older hfprune's leftover: no pid in its name
    write_atomically(output, lambda folder: (folder / "who").write_text("me"))
    assert not list(tmp_path.glob(".out.tmp-*"))


LOCKER = """
    import sys
    from pathlib import Path
    from hfprune.io.rundir import open_work_dir

    open_work_dir(Path(sys.argv[1]), {"model": "m", "task": "sst2"}, resume=sys.argv[2] == "resume")
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_on_the_same_output_is_refused_while_the_first_lives(tmp_path):
    from hfprune.errors import PipelineInputError
    from hfprune.io.rundir import open_work_dir, release_work_dir, work_dir_for

    output = tmp_path / "out"
    work_dir, run = work_dir_for(output), {"model": "m", "task": "sst2"}
    first = _start(LOCKER, work_dir, "new")
    try:
        for resume in (False, True):
            with pytest.raises(PipelineInputError, match=rf"^another hfprune run is writing {output} \(pid {first.pid}\)"):
                open_work_dir(work_dir, run, resume)
        assert (work_dir / "run.json").is_file()  # the live run's state is untouched
    finally:
        first.kill()
        first.wait(60)
    # its lock died with it: the folder is an interrupted run, resumable (here or by another process)
    with pytest.raises(PipelineInputError, match="holds an interrupted run"):
        open_work_dir(work_dir, run, False)
    assert open_work_dir(work_dir, run, True)["task"] == "sst2"
    second = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOCKER), str(work_dir), "resume"], input="\n", capture_output=True,
        text=True, env=SUBPROCESS_ENV, timeout=120, check=False,
    )  # fmt: skip
    assert second.returncode == 1 and f"(pid {os.getpid()})" in second.stderr  # this process holds it now
    release_work_dir(work_dir)
    again = _start(LOCKER, work_dir, "resume")  # released: another process takes it over
    again.kill()
    again.wait(60)


def test_a_run_that_failed_in_this_process_can_be_resumed_in_it(tmp_path):
    from hfprune.io.rundir import open_work_dir, work_dir_for

    work_dir, run = work_dir_for(tmp_path / "out"), {"model": "m", "task": "sst2"}
    open_work_dir(work_dir, run, False)  # ... and the run failed: its lock is still held by this process
    assert open_work_dir(work_dir, run, True)["model"] == "m"
    shutil.rmtree(work_dir)  # the run succeeded
    assert open_work_dir(work_dir, run, False)["model"] == "m"  # a new run on the same output


# ---- 9. --overwrite onto a folder that holds the input ------------------------------------------------------------
def test_an_output_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path):
    from hfprune.errors import PipelineInputError
    from hfprune.io.output import check_output_dir, job_inputs

    project = tmp_path / "proj"
    (project / "base-model").mkdir(parents=True)
    (project / "base-model" / "config.json").write_text("{}")
    (project / "data").mkdir()
    (project / "data" / "train.csv").write_text("text,label\n")
    (tmp_path / "link").symlink_to(project / "base-model")
    inputs = job_inputs(project / "base-model", data_kwargs={"train_file": project / "data" / "train.csv", "data_dir": None})
    for output, relation in (
        (project, "contains"),  # prune proj/base-model -o proj --overwrite
        (project / "base-model", "is"),  # drop-layers M -o M --overwrite
        (tmp_path / "link", "is"),  # the same folder through a symlink
        (project / "data", "contains"),  # -o DATA_DIR --overwrite
        (project / "base-model" / "pruned", "lies inside"),
    ):
        with pytest.raises(PipelineInputError, match=rf"{relation} the input") as error:
            check_output_dir(output, overwrite=True, inputs=inputs)
        assert "\n" not in str(error.value)
    assert (project / "base-model" / "config.json").is_file() and (project / "data" / "train.csv").is_file()
    check_output_dir(project / "pruned", overwrite=True, inputs=inputs)  # beside the inputs: fine
    check_output_dir(project / "base-model" / "onnx", inputs=inputs, inside_inputs=True)  # an export kept in its checkpoint
    check_output_dir(tmp_path / "bert-base-uncased", inputs=["bert-base-uncased"])  # a Hub id is no local input


def test_jobs_refuse_an_output_that_holds_their_input(tmp_path, monkeypatch):
    from cli_fixtures import write_sst2, write_tiny_bert

    from hfprune.errors import PipelineInputError
    from hfprune.export.convert import convert_checkpoint
    from hfprune.jobs.score import score_task

    write_tiny_bert(tmp_path / "proj" / "bert", with_head=True)
    write_sst2(tmp_path / "proj" / "glue", n_train=16, n_dev=8)
    before = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*"))
    with pytest.raises(PipelineInputError, match="contains the input"):
        score_task(str(tmp_path / "proj" / "bert"), "sst2", output_dir=tmp_path / "proj", overwrite=True,
                   data_kwargs={"data_dir": tmp_path / "proj" / "glue"})  # fmt: skip
    with pytest.raises(PipelineInputError, match="is the input"):
        score_task(str(tmp_path / "proj" / "bert"), "sst2", output_dir=tmp_path / "proj" / "glue", overwrite=True,
                   data_kwargs={"data_dir": tmp_path / "proj" / "glue"})  # fmt: skip

    monkeypatch.setattr("hfprune.export.convert.v4_pruned_heads", lambda config: {0: [1]})  # as if pruned by v4
    with pytest.raises(PipelineInputError, match="is the input"):
        convert_checkpoint(tmp_path / "proj" / "bert", tmp_path / "proj" / "bert", overwrite=True)
    with pytest.raises(PipelineInputError, match="contains the input"):
        convert_checkpoint(tmp_path / "proj" / "bert", tmp_path / "proj", overwrite=True)
    if importlib.util.find_spec("onnxruntime"):
        from hfprune.export.onnx import export_onnx

        with pytest.raises(PipelineInputError, match="is the input"):
            export_onnx(tmp_path / "proj" / "bert", tmp_path / "proj" / "bert", overwrite=True)

    from hfprune.jobs.prune import drop_layers_for_task, prune_for_task

    bert, glue = str(tmp_path / "proj" / "bert"), tmp_path / "proj" / "glue"
    with pytest.raises(PipelineInputError, match="contains the input"):  # `prune proj/base-model -o proj`
        prune_for_task(bert, "sst2", data_dir=glue, output_dir=tmp_path / "proj", overwrite=True)
    with pytest.raises(PipelineInputError, match="is the input"):  # `-o DATA_DIR`
        prune_for_task(bert, "sst2", data_dir=glue, output_dir=glue, overwrite=True)
    with pytest.raises(PipelineInputError, match="is the input"):  # `drop-layers M -o M`
        drop_layers_for_task(bert, bert, k=1, overwrite=True)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == before
