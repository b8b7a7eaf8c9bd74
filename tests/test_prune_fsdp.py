"""`hfprune prune --fsdp` under `torchrun --standalone --nproc_per_node 2` (gloo, CPU): FSDP2 recovery for a decoder.

Three runs of the same command on a tiny Llama with tied embeddings: alone, under two processes (DDP) and under two
processes with `--fsdp`. Two iterative steps with distillation from the dense model (logits and layers): each step
scores and prunes the whole model, then recovers with the student and the teacher sharded; then the dense control,
sharded too. Scoring is by weight magnitude, and the 32 training blocks divide into the global batch of 16, so the
run alone and the DDP run train on the same batches and come out bit for bit equal (gradient importance would
not: its per-batch |gradient| depends on how the ranks' batches are made up).

FSDP sums the two ranks' gradients in another order than DDP (a reduce-scatter of shards, not an all-reduce of
buckets) and clips by a norm summed from per-shard parts, so its weights differ from DDP's in the last bits: 1.2e-8
at most here after 4 updates (3e-8 with untied embeddings; weights up to 1.0, where float32's spacing is 1.2e-7).
The tolerance, 1e-6, is a thousandth of one update (AdamW moves each weight by about the learning rate, 1e-3, per
step): a rank's batch left out, or a phase trained on a stale copy of the weights, would move them by that much.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from cli_fixtures import one_error_line, sentences, subprocess_environment, write_tiny_bert
from safetensors.torch import load_file
from typer.testing import CliRunner

import hfprune
from hfprune.cli import app
from hfprune.errors import PruningError
from hfprune.jobs.finetune import training_kwargs
from hfprune.pruning_config import PruningConfig
from hfprune.training.fsdp import FSDP_CONFIG

SCRIPT = Path(__file__).parent / "scripts" / "prune_distributed.py"
ALONE = [sys.executable]
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TRAIN_LINES = 88  # 32 blocks of 16 tokens: two full global batches of 16 per epoch, nothing left over

distributed = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)


def write_tied_llama_and_text(root: Path) -> tuple[Path, Path]:
    """A 2-layer Llama (4 query heads in 2 KV groups, lm_head tied to the embeddings) and a text folder."""
    write_tiny_bert(root / "tok")  # only for its tokenizer
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tok")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    lines = [text for text, _ in sentences(TRAIN_LINES + 20, 0)]
    (root / "text").mkdir()
    (root / "text" / "train.txt").write_text("\n".join(lines[:TRAIN_LINES]))
    (root / "text" / "validation.txt").write_text("\n".join(lines[TRAIN_LINES:]))
    return root / "llama", root / "text"


def prune_args(model: Path, text: Path, output: Path, *extra: str, device: str = "cpu") -> list[str]:
    return [
        "prune", str(model), "--task", "lm", "--data-dir", str(text), "-o", str(output),
        "--heads", "0.5", "--ffn", "0.25", "--steps", "2", "--method", "magnitude", "--distill", "0.5",
        "--distill-layers", "1.0", "--lr", "1e-3", "--batch-size", "16", "--max-length", "16",
        "--device", device, "--precision", "fp32", "--no-bench", "-q", *extra,
    ]  # fmt: skip


def start(launcher: list[str], args: list[str], root: Path, name: str) -> subprocess.Popen:
    """The run `name`, its records in `root/records-NAME/`, its output in `root/NAME.stdout` and `.stderr` (files, not
    pipes: two runs at once must not wait on each other's full pipe)."""
    with open(root / f"{name}.stdout", "w") as stdout, open(root / f"{name}.stderr", "w") as stderr:
        return subprocess.Popen(
            [*launcher, str(SCRIPT), str(root / f"records-{name}"), *args], env=subprocess_environment(), stdout=stdout, stderr=stderr
        )


def finish(process: subprocess.Popen, root: Path, name: str) -> None:
    process.wait(timeout=600)
    output = (root / f"{name}.stdout").read_text()[-3000:] + (root / f"{name}.stderr").read_text()[-3000:]
    assert process.returncode == 0, f"{name}: {output}"


def run_three(root: Path, device: str) -> Path:
    """`one/` alone, `ddp/` and `fsdp/` under two processes (alone and DDP side by side: two cores, three processes)."""
    model, text = write_tied_llama_and_text(root)
    runs = {
        "one": (ALONE, prune_args(model, text, root / "one" / "out", device=device)),
        "ddp": (TWO_PROCESSES, prune_args(model, text, root / "ddp" / "out", device=device)),
        "fsdp": (TWO_PROCESSES, prune_args(model, text, root / "fsdp" / "out", "--fsdp", device=device)),
    }
    side_by_side = {name: start(*runs[name], root, name) for name in ("one", "ddp")}
    for name, process in side_by_side.items():
        finish(process, root, name)
    finish(start(*runs["fsdp"], root, "fsdp"), root, "fsdp")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return run_three(tmp_path_factory.mktemp("fsdp"), "cpu")


def records(root: Path, name: str) -> list[list[dict]]:
    return [json.loads(path.read_text()) for path in sorted((root / f"records-{name}").glob("rank-*.json"))]


@distributed
def test_fsdp_trains_every_phase_sharded_the_teacher_too(runs: Path):
    (alone,), ddp, fsdp = records(runs, "one"), records(runs, "ddp"), records(runs, "fsdp")
    # step 1 and step 2 recover (distilling from the teacher), then the dense control trains (no teacher)
    assert [record["trainer"] for record in alone] == ["PruningTrainer"] * 3
    assert [record["teacher"] for record in ddp[0]] == ["LlamaForCausalLM", "LlamaForCausalLM", None]
    assert {record["wrapper"] for rank in ddp for record in rank} == {"DistributedDataParallel"}
    assert [record["teacher"] for record in fsdp[0]] == ["FSDPLlamaForCausalLM", "FSDPLlamaForCausalLM", None]
    assert {record["wrapper"] for rank in fsdp for record in rank} == {"FSDPLlamaForCausalLM"}
    for phase, (whole, *shards) in enumerate(zip(ddp[0], *fsdp)):
        assert whole["parameters_here"] == alone[phase]["parameters_here"]  # DDP: every rank holds the whole model
        assert sum(shard["parameters_here"] for shard in shards) == whole["parameters_here"]  # FSDP: each a half
        assert all(shard["parameters_here"] < whole["parameters_here"] for shard in shards)
        assert alone[phase]["steps"] == whole["steps"] == shards[0]["steps"] == shards[1]["steps"] > 0
        assert alone[phase]["structure"] == whole["structure"] == shards[0]["structure"] == shards[1]["structure"]


@distributed
def test_fsdp_plans_as_one_process_writes_once_and_trains_as_ddp(runs: Path):
    one, ddp, fsdp = (runs / name / "out" for name in ("one", "ddp", "fsdp"))
    assert sorted(p.name for p in (runs / "fsdp").iterdir()) == ["out"]  # no work directory, no tmp or old folder left
    assert sorted(p.name for p in fsdp.iterdir()) == sorted(p.name for p in one.iterdir())
    assert (runs / "fsdp.stdout").read_text().count("saved to") == 1  # rank 0 alone prints the result

    plans = [json.loads((out / "config.json").read_text())["hfprune"] for out in (one, ddp, fsdp)]
    assert plans[0] == plans[1] == plans[2]
    results = [json.loads((out / "hfprune_results.json").read_text()) for out in (one, ddp, fsdp)]
    assert results[2]["settings"] == {**results[1]["settings"], "fsdp": True}
    assert results[1]["metrics_after"] == results[0]["metrics_after"]  # alone and DDP: the same updates, bit for bit
    assert _close(results[2]["metrics_after"], results[1]["metrics_after"])
    assert _close(results[2]["dense_control"], results[1]["dense_control"])

    weights = [load_file(out / "model.safetensors") for out in (one, ddp, fsdp)]
    assert sorted(weights[2]) == sorted(weights[1])  # the tied lm_head saved once, as DDP saves it
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    difference = max((weights[2][name] - weights[1][name]).abs().max().item() for name in weights[1])
    assert difference <= 1e-6, difference  # measured: 1.2e-8 (see the module notes)

    reloaded = [hfprune.from_pretrained(out).eval() for out in (ddp, fsdp)]
    assert reloaded[1].lm_head.weight is reloaded[1].get_input_embeddings().weight
    ids = torch.randint(5, reloaded[0].config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [model(input_ids=ids).logits for model in reloaded]
    assert torch.allclose(logits[0], logits[1], rtol=0, atol=1e-5), (logits[0] - logits[1]).abs().max()


def _close(a, b) -> bool:
    """Metrics (nested dicts of floats, and strings) equal up to float32 noise."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[key], b[key]) for key in a)
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-5)
    return a == b


def test_fsdp_alone_is_refused_in_one_line_before_any_work(tmp_path: Path):
    result = CliRunner().invoke(app, ["prune", "no/such-model", "--task", "lm", "--fsdp", "-o", str(tmp_path / "out")])
    assert one_error_line(result) == (
        "Error: --fsdp shards training across processes: launch hfprune prune with torchrun --nproc_per_node N (N >= 2)"
    )
    assert not (tmp_path / "out").exists()


def test_what_the_trainer_gets_with_fsdp(tmp_path: Path):
    """FSDP2 with full sharding and full-weight checkpoints, each model's own layer class as the unit; DDP without."""
    settings = training_kwargs(tmp_path, batch_size=16, learning_rate=1e-3, seed=0, quiet=True, device="cpu", fsdp=True)
    config = PruningConfig(**settings)
    assert config.fsdp is True and config.fsdp_plugin_args == {
        "fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "cpu_ram_efficient_loading": False,
        "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True,
    }  # fmt: skip
    assert FSDP_CONFIG == {
        "version": 2,
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",
    }  # not edited
    plain = PruningConfig(
        **training_kwargs(tmp_path, batch_size=16, learning_rate=1e-3, seed=0, quiet=True, device="cpu")
    )
    assert not plain.fsdp and plain.fsdp_plugin_args is None


def test_l0_gates_are_refused_with_fsdp(tmp_path: Path):
    with pytest.raises(
        PruningError, match="^pruning_method='l0' trains gates outside the model, which FSDP does not shard"
    ):
        PruningConfig(output_dir=str(tmp_path), use_cpu=True, pruning_method="l0", target_head_sparsity=0.5, fsdp=True)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_fsdp_on_two_gpus(tmp_path: Path):
    """The same three runs on CUDA (nccl), where accelerate turns FSDP on itself. Not yet run: no machine with two
    GPUs was available; the tolerance is the CPU one, which GPU kernels may need loosened."""
    root = run_three(tmp_path, "cuda")
    assert {record["wrapper"] for rank in records(root, "fsdp") for record in rank} == {"FSDPLlamaForCausalLM"}
    plans = [
        json.loads((root / name / "out" / "config.json").read_text())["hfprune"] for name in ("one", "ddp", "fsdp")
    ]
    assert plans[0] == plans[1] == plans[2]
    weights = [load_file(root / name / "out" / "model.safetensors") for name in ("ddp", "fsdp")]
    assert max((weights[1][name] - weights[0][name]).abs().max().item() for name in weights[0]) <= 1e-6
