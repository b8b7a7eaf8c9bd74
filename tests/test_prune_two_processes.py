"""`hfprune prune` under `torchrun --standalone --nproc_per_node 2` (gloo, CPU) against the same command alone.

The tiny BERT has no task head (so the job fine-tunes one first) and no dropout. With `--batch-size 16` the one
process trains in two micro-batches of 8 per update; each of the two processes trains on one batch of 8, the
batches the one process accumulates (accelerate hands batch i of the same seeded order to rank i % 2), and DDP
averages their gradients. Halving is exact in floating point, so the two runs compute the very same updates:
the same plan, the same step counts, and checkpoints whose logits agree to 1e-5 (bit for bit here).

What is allowed to differ, and is not compared exactly: the fine-tuning summary's `best_validation`
(transformers 5 multiplies the evaluation loss of a model whose forward takes `**kwargs` by the number of
processes, so under two processes it reads twice the loss), the training loss the pruning history logs (a
mean the Trainer partly takes over rank 0's batches alone: equal to about 1e-5 relative) and the wall-clock
timings. With dropout the logits would differ too: each rank draws its own dropout masks, where one process
draws both micro-batches' from one stream.

A `--speedup` job times models on rank 0 alone and hands the numbers to the other rank: run with a timer that
reports different times on each rank (`FLOPS_TIMER`), its ranks still plan the same steps, and rank 1 never times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_fixtures import subprocess_environment, write_sst2, write_tiny_bert

SCRIPT = Path(__file__).parent / "scripts" / "prune_distributed.py"
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)


def prune_args(root: Path, output: Path, batch_size: int = 16) -> list[str]:
    return [
        "prune", str(root / "bert"), "--task", "sst2", "--data-dir", str(root / "glue"), "-o", str(output),
        "--heads", "0.5", "--ffn", "0.25", "--lr", "1e-3", "--batch-size", str(batch_size), "--max-length", "32",
        "--finetune-epochs", "1", "--epochs", "1", "--no-bench", "--allow-weak-baseline", "-q",
    ]  # fmt: skip


def run(launcher: list[str], records: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*launcher, str(SCRIPT), str(records), *args], env=subprocess_environment(**env), capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One run alone (`one/`) and one under torchrun with two processes (`two/`), each in its own parent folder."""
    root = tmp_path_factory.mktemp("ddp")
    write_tiny_bert(root / "bert")
    config = json.loads((root / "bert" / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # dropout masks are drawn per rank
    (root / "bert" / "config.json").write_text(json.dumps(config))
    write_sst2(root / "glue", n_train=64, n_dev=16)
    for name, launcher in (("one", [sys.executable]), ("two", TWO_PROCESSES)):
        result = run(launcher, root / f"records-{name}", prune_args(root, root / name / "out"))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        (root / f"{name}.stdout").write_text(result.stdout)
    return root


def test_two_processes_train_data_parallel_on_the_same_global_batch(runs: Path):
    alone = json.loads((runs / "records-one" / "rank-0.json").read_text())
    ranks = [json.loads((runs / "records-two" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["trainer"] for record in alone] == ["Trainer", "PruningTrainer", "PruningTrainer"]  # head, prune, control
    assert ranks[0] == ranks[1]
    for one, two in zip(alone, ranks[0], strict=True):
        assert (one["world_size"], two["world_size"]) == (1, 2)
        assert two["wrapper"] == "DistributedDataParallel"
        # the global batch is --batch-size 16 either way: 2 micro-batches of 8 alone, 1 of 8 on each of 2 ranks
        assert one["per_device_batch"] * one["accumulation"] == 16
        assert two["per_device_batch"] * two["accumulation"] * 2 == 16
        assert one["steps"] == two["steps"] > 0


def test_two_processes_write_one_folder_with_the_same_plan_and_logits(runs: Path):
    from transformers import AutoTokenizer

    import hfprune

    one, two = runs / "one" / "out", runs / "two" / "out"
    assert sorted(p.name for p in (runs / "two").iterdir()) == ["out"]  # no work directory, no tmp or old folder left
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert (two / "README.md").is_file() and (two / "hfprune_results.json").is_file()
    assert (runs / "two.stdout").read_text().count("saved to") == 1  # rank 0 alone prints the result

    record_one, record_two = (json.loads((out / "config.json").read_text())["hfprune"] for out in (one, two))
    assert record_one == record_two  # kept layers, heads and FFN neurons
    results = [json.loads((out / "hfprune_results.json").read_text()) for out in (one, two)]
    differ = sorted(key for key in results[0] if results[0][key] != results[1][key])
    assert set(differ) <= {"timings_s", "finetune", "pruning_history"}, differ
    assert {**results[0]["finetune"], "best_validation": None} == {**results[1]["finetune"], "best_validation": None}
    history = [[{**entry, "train_loss": None} for entry in result["pruning_history"]] for result in results]
    assert history[0] == history[1]  # the steps, sparsities and parameter counts of every pruning step
    losses = [[entry["train_loss"] for entry in result["pruning_history"] if "train_loss" in entry] for result in results]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)  # the logged mean loss: rank 0's last steps alone
    assert (one / "importance.png").read_bytes() == (two / "importance.png").read_bytes()  # the card's head scores
    assert (one / "README.md").read_text() == (two / "README.md").read_text()  # one card, the same

    tokenizer = AutoTokenizer.from_pretrained(one)
    inputs = tokenizer(["the film is good .", "a dull plot and story .", "very boring"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = [hfprune.from_pretrained(out).eval()(**inputs).logits for out in (one, two)]
    assert torch.allclose(logits[0], logits[1], rtol=0, atol=1e-5), (logits[0] - logits[1]).abs().max()


def test_a_batch_that_does_not_divide_among_the_processes_is_refused_before_any_work(runs: Path):
    out = runs / "odd" / "out"
    result = run(TWO_PROCESSES, runs / "records-odd", prune_args(runs, out, batch_size=15))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: --batch-size 15 does not divide among 2 processes; use a multiple of 2"]  # once, from rank 0
    assert "exitcode  : 2" in result.stderr  # torchrun's report: bad input, not a crash
    assert not (runs / "odd").exists() or not any((runs / "odd").iterdir())  # nothing written
    assert not (runs / "records-odd").exists() or all(json.loads(p.read_text()) == [] for p in (runs / "records-odd").iterdir())


def test_a_speed_target_is_timed_on_rank_0_alone_and_planned_alike(runs: Path):
    args = [
        "prune", str(runs / "bert"), "--task", "sst2", "--data-dir", str(runs / "glue"), "-o", str(runs / "speed" / "out"),
        "--speedup", "1.5", "--steps", "1", "--speedup-batch-size", "2", "--speedup-seq-len", "16", "--lr", "1e-3",
        "--batch-size", "16", "--max-length", "32", "--finetune-epochs", "1", "--epochs", "1", "--no-bench",
        "--no-dense-control", "--allow-weak-baseline", "-q",
    ]  # fmt: skip
    result = run(TWO_PROCESSES, runs / "records-speed", args, FLOPS_TIMER="1")  # rank 1's timer: pruned models 2x slower
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((runs / "records-speed" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    pruning = [[record for record in rank if record["trainer"] == "PruningTrainer"] for rank in ranks]
    assert len(pruning[0]) == len(pruning[1]) >= 1
    assert pruning[0][0]["timed"] >= 5  # the latency model: the dense model beside five pruned copies, on rank 0
    assert all(record["timed"] == 0 for record in pruning[1])  # rank 1 never timed a model
    assert [record["structure"] for record in pruning[0]] == [record["structure"] for record in pruning[1]]
    results = json.loads((runs / "speed" / "out" / "hfprune_results.json").read_text())
    assert results["sparsity"]["parameters"]["kept"] < results["sparsity"]["parameters"]["original"]
    target = results["speed_target"]  # rank 0's FLOPs, which the latency model predicts exactly (rank 1's: 2x off)
    assert target["measured_speedup"] == pytest.approx(target["predicted_speedup"], rel=1e-6) and target["met"]
