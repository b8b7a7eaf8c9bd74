"""`SpeedReport`: side-by-side timings of several models as rows, with their noise verdict, saved as JSON and
shown as a markdown table or a plot.

It exists apart from the timing so that code which only reads, shows or re-judges a saved report (the model
card, `hfprune bench --json`, the benchmarks) needs neither a timer nor the models.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PruningError
from .noise import NOISE_ADVICE, assess_noise, noise_verdict

__all__ = ["SpeedReport"]


@dataclass
class SpeedReport:
    """Side-by-side timings of several models; `speedup` and `ideal_speedup` are relative to the first model (of
    its own part, for the rows that `merged` added: e.g. "pruned bf16" against "dense bf16").

    Each row: `model`, `batch_size`, `seq_len`, `median_ms`, `p25_ms`, `p75_ms` (the spread over repeats),
    `throughput` (examples/s at the median), `flops` (forward), `params`, `speedup` (first model's median /
    this one's), `ideal_speedup` (first model's FLOPs / this one's), `efficiency` (speedup / ideal) and
    `noise` (`{"noisy": bool, "reasons": [...]}`, see `noise_reasons`). `noise` on the report is the overall
    verdict: the machine's load and every row's reasons.
    """

    device: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] = field(default_factory=lambda: noise_verdict([]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedReport:
        """The inverse of `to_dict`. A report saved before noise was recorded gets the checks its rows allow
        (spread, speedup above the ideal); drift and load cannot be judged afterwards."""
        rows = [copy.deepcopy(dict(row)) for row in data["rows"]]
        noise = data.get("noise")
        if noise is None or any("noise" not in row for row in rows):
            noise = assess_noise(rows)
        return cls(device=data["device"], rows=rows, settings=dict(data.get("settings", {})), noise=copy.deepcopy(dict(noise)))

    def save_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> SpeedReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def merged(self, other: SpeedReport) -> SpeedReport:
        """This report with `other`'s rows after its own (the same models timed again, e.g. cast to bf16): each
        part's speedups stay relative to its own first model, the device and settings are this report's, and
        the noise verdict covers both."""
        reasons = list(dict.fromkeys([*self.noise.get("reasons", []), *other.noise.get("reasons", [])]))
        return SpeedReport(
            device=self.device, rows=[*self.rows, *other.rows], settings=dict(self.settings), noise=noise_verdict(reasons)
        )

    def models(self) -> list[str]:
        return list(dict.fromkeys(row["model"] for row in self.rows))

    @property
    def noisy(self) -> bool:
        return bool(self.noise.get("noisy"))

    def noise_warning(self) -> str | None:
        """One line for a terminal or a card when the timing is noisy (None when it is not)."""
        if not self.noisy:
            return None
        noisy_rows = sum(1 for row in self.rows if row.get("noise", {}).get("noisy"))
        reasons = self.noise.get("reasons", [])
        first = reasons[0] if reasons else "see the rows"
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        return (
            f"noisy timing ({noisy_rows} of {len(self.rows)} rows; {first}{more}): these speedups are not "
            f"trustworthy; {NOISE_ADVICE}"
        )

    def table(self) -> str:
        """A markdown table, one row per model and shape, with the device and settings above it and a
        warning below it when the timing is noisy."""
        lines = [
            f"Device: {self.device}; median of {self.settings.get('repeats', '?')} interleaved repeats "
            f"after {self.settings.get('warmup', '?')} warm-up, p25-p75 in brackets.",
            "",
            *self._precision_note(),
            "| model | batch | seq | median ms [p25-p75] | examples/s | GFLOPs | params (M) | speedup | ideal | speedup / ideal | noise |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['model']} | {row['batch_size']} | {row['seq_len']} "
                f"| {row['median_ms']:.1f} [{row['p25_ms']:.1f}-{row['p75_ms']:.1f}] "
                f"| {row['throughput']:.1f} | {row['flops'] / 1e9:.2f} | {row['params'] / 1e6:.2f} "
                f"| {row['speedup']:.2f}x | {row['ideal_speedup']:.2f}x | {row['efficiency']:.2f} "
                f"| {'NOISY' if row.get('noise', {}).get('noisy') else 'ok'} |"
            )
        if self.noisy:
            lines += ["", f"Warning: {self.noise_warning()}"]
            lines += [f"- {reason}" for reason in self.noise.get("reasons", [])]
        return "\n".join(lines)

    def _precision_note(self) -> list[str]:
        """The line that explains rows timed in more than one dtype (`time_against_dense` on a GPU), or none."""
        precisions = self.settings.get("precisions")
        if not precisions or len(precisions) < 2:
            return []
        note = (
            f"Timed in {', '.join(precisions)}: rows named with a dtype are copies of the models cast to it for timing "
            "only, their speedup against dense in the same dtype."
        )
        return [note, ""]

    def plot(self, path: str | Path) -> None:
        """A PNG: throughput vs batch size per model (left) and measured vs ideal speedup (right), one row of
        panels per sequence length, ticks at the measured batch sizes."""
        figure = self._figure()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)

    def _figure(self):
        """The matplotlib Figure of `plot`, on its own Agg canvas (no global backend change)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.rows:
            raise PruningError("the report has no rows to plot")
        seq_lengths = list(dict.fromkeys(row["seq_len"] for row in self.rows))
        models = self.models()
        figure = Figure(figsize=(11, 4 * len(seq_lengths)))
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(seq_lengths), 2, squeeze=False)
        colors = [f"C{i % 10}" for i in range(len(models))]
        for (left, right), seq_len in zip(axes, seq_lengths):
            for name, color in zip(models, colors):
                rows = [row for row in self.rows if row["model"] == name and row["seq_len"] == seq_len]
                batches = [row["batch_size"] for row in rows]
                left.errorbar(
                    batches,
                    [row["throughput"] for row in rows],
                    yerr=_throughput_spread(rows),
                    marker="o",
                    color=color,
                    label=name,
                    capsize=3,
                )
                if name != models[0]:
                    right.plot(batches, [row["speedup"] for row in rows], "o-", color=color, label=f"{name} measured")
                    right.plot(batches, [row["ideal_speedup"] for row in rows], "--", color=color, label=f"{name} ideal (FLOPs)")
            measured = sorted({row["batch_size"] for row in self.rows if row["seq_len"] == seq_len})
            left.set(xscale="log", xlabel="batch size", ylabel="examples / s", title=f"throughput, seq {seq_len}")
            right.set(xscale="log", xlabel="batch size", ylabel=f"speedup vs {models[0]}", title=f"speedup, seq {seq_len}")
            right.axhline(1.0, color="gray", lw=0.8)
            for axis in (left, right):
                axis.set_xticks(measured, [str(batch) for batch in measured])
                axis.set_xticks([], minor=True)  # no log-scale minor ticks between the measured sizes
                axis.grid(alpha=0.3)
                if axis.get_legend_handles_labels()[0]:
                    axis.legend(fontsize=7)
        title = self.device + ("  (NOISY timing: " + NOISE_ADVICE + ")" if self.noisy else "")
        figure.suptitle(title, fontsize=9)
        figure.tight_layout()
        return figure


def _throughput_spread(rows: list[dict[str, Any]]) -> list[list[float]]:
    """Asymmetric error bars of the throughput from the p25/p75 latencies."""
    low = [row["throughput"] - row["batch_size"] / (row["p75_ms"] / 1e3) for row in rows]
    high = [row["batch_size"] / (row["p25_ms"] / 1e3) - row["throughput"] for row in rows]
    return [low, high]
