"""Export a pruned model to ONNX and check it in ONNX Runtime against PyTorch.

Most production BERT-class classifiers are served by ONNX Runtime. A pruned model exports as it is: its layers
are ordinary modules of smaller, uneven shapes (an `EmptyAttention` or `EmptyMLP` becomes a constant), and
tracing records each layer's own shapes. The export uses PyTorch's TorchScript exporter (`dynamo=False`; the
torch.export-based default needs the onnxscript package on top, and was not tried here; the TorchScript one is
deprecated since PyTorch 2.9 but works in 2.13) at opset 17, with dynamic batch and sequence axes. Decoders export a
forward without a KV cache: logits for every position.

Tracing freezes every Python branch on a tensor value or size. transformers' mask code stops skipping the mask
while it is traced, but any branch left (in modeling code, a hook) gives a graph that is right only for inputs like
the traced ones. So the model is traced on a padded batch, and the result is trusted only after onnxruntime has
matched PyTorch on two other input shapes (padded rows and full rows): a max abs difference above
`atol + rtol * max|PyTorch output|`, or a NaN or inf in either output, raises `OnnxMismatchError` and leaves
nothing at OUT. The relative part is
there for language-model logits: fp32 round-off alone differs by ~1e-4 on SmolLM2's logits of magnitude 35
(2.5e-6 of it, dense model, any onnxruntime optimisation level), while a classifier's logits of magnitude ~1 are
held to 1e-4 + 1e-5. `rtol=0` is the plain absolute criterion.

`onnx` and `onnxruntime` are an optional extra (`pip install 'hfprune[onnx]'`), imported only inside these calls.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import check_number
from ..engine.arch import get_adapter
from ..errors import PruningError
from ..io.checkpoint import TOKENIZER_FILES, load_tokenizer, resolve_model
from ..io.loading import from_pretrained
from ..io.output import check_output_dir, write_atomically

__all__ = ["ONNX_DIR", "ONNX_FILE", "ONNX_REPORT", "OnnxExport", "OnnxMismatchError", "export_onnx", "read_onnx_report"]

ONNX_FILE = "model.onnx"
ONNX_REPORT = "onnx_export.json"  # what was exported and how closely onnxruntime matched PyTorch
ONNX_DIR = "onnx"  # where a checkpoint keeps its export (`hfprune export CKPT -o CKPT/onnx`), for the card
DEFAULT_OPSET = 17
TRACE_SHAPE = (2, 16)
CHECK_SHAPES = ((1, 7), (4, 23))  # neither is the traced shape: both prove the dynamic axes
_SKIPPED_OUTPUTS = ("loss", "past_key_values", "hidden_states", "attentions", "mems")


class OnnxMismatchError(PruningError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance: the export is not trusted."""


@dataclass
class OnnxExport:
    """What `export_onnx` wrote and how closely onnxruntime matched PyTorch (max abs difference per shape)."""

    output_dir: Path
    opset: int
    inputs: list[str]
    outputs: list[str]
    atol: float
    rtol: float
    checks: list[dict[str, Any]] = field(default_factory=list)  # batch_size, seq_len, max_abs_diff, tolerance

    @property
    def path(self) -> Path:
        return self.output_dir / ONNX_FILE

    @property
    def max_abs_diff(self) -> float:
        return max(check["max_abs_diff"] for check in self.checks)

    @property
    def passed(self) -> bool:
        # `<=` is False for NaN: a difference that is not a number never passes
        return bool(self.checks) and all(check["max_abs_diff"] <= check["tolerance"] for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("output_dir")
        return {"format": "onnx", "file": ONNX_FILE, **data, "max_abs_diff": self.max_abs_diff}


def _require_onnx() -> tuple[Any, Any]:
    try:
        return importlib.import_module("onnx"), importlib.import_module("onnxruntime")
    except ImportError as error:
        raise PruningError(
            f"ONNX export needs onnx and onnxruntime ({error.name} is not installed): pip install 'hfprune[onnx]'"
        ) from None


# ---- the model as ONNX sees it ----------------------------------------------------------------------------
class _Forward(nn.Module):
    """Positional tensor inputs in, the model's output tensors out (no KV cache), as the exporter needs."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.extra = _no_cache(model)
        self.eval()  # the exporter restores the wrapper's mode afterwards, and with it the model's: keep it eval

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(**dict(zip(self.input_names, tensors)), **self.extra, return_dict=True)
        return tuple(output[name] for name in self.output_names)


def _no_cache(model: nn.Module) -> dict[str, Any]:
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def _input_names(model: nn.Module) -> list[str]:
    """input_ids and attention_mask, plus token_type_ids where the model has more than one segment type."""
    parameters = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in parameters and (getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


def _inputs(model: nn.Module, names: Sequence[str], batch_size: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded token ids; row r ends in min(3r, seq_len - 2) padding tokens, so both padded and full rows are seen."""
    generator = torch.Generator().manual_seed(seed)
    vocab_size = model.config.vocab_size
    inputs = {"input_ids": torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)}
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    for row in range(batch_size):
        padding = min(3 * row, seq_len - 2)
        if padding:
            mask[row, -padding:] = 0
    inputs["attention_mask"] = mask
    if "token_type_ids" in names:
        types = torch.zeros(batch_size, seq_len, dtype=torch.long)
        types[:, seq_len // 2 :] = 1
        inputs["token_type_ids"] = types
    return {name: inputs[name] for name in names}


def _output_names(model: nn.Module, sample: dict[str, torch.Tensor]) -> list[str]:
    with torch.no_grad():
        output = model(**sample, **_no_cache(model), return_dict=True)
    return [name for name, value in output.items() if torch.is_tensor(value) and name not in _SKIPPED_OUTPUTS]


def _dynamic_axes(wrapper: _Forward, sample: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    axes = {name: {0: "batch", 1: "sequence"} for name in sample}
    seq_len = sample["input_ids"].shape[1]
    with torch.no_grad():
        outputs = wrapper(*sample.values())
    for name, value in zip(wrapper.output_names, outputs):
        axes[name] = {0: "batch", 1: "sequence"} if value.ndim >= 2 and value.shape[1] == seq_len else {0: "batch"}
    return axes


# ---- export and check -------------------------------------------------------------------------------------
def _export(wrapper: _Forward, sample: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # The tracer warns about every Python branch of transformers' code and about the legacy exporter; the
        # checks against PyTorch below are what decides whether the trace is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(sample.values()),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(sample),
            output_names=wrapper.output_names,
            dynamic_axes=_dynamic_axes(wrapper, sample),
            do_constant_folding=True,
        )


def _check(
    onnx: Any, ort: Any, wrapper: _Forward, path: Path, shapes: Sequence[tuple[int, int]], atol: float, rtol: float
) -> list[dict[str, Any]]:
    """Max abs difference between onnxruntime (CPU, full graph optimisation) and PyTorch at each shape, and the
    tolerance it is held to there (`atol + rtol * max|PyTorch output|`)."""
    onnx.checker.check_model(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    declared = {graph_input.name for graph_input in session.get_inputs()}
    checks = []
    for seed, (batch_size, seq_len) in enumerate(shapes, start=1):
        sample = _inputs(wrapper.model, wrapper.input_names, batch_size, seq_len, seed)
        with torch.no_grad():
            expected = wrapper(*sample.values())
        # only the inputs the graph declares: the exporter drops one the model never reads (the attention_mask
        # of a model whose every head was removed), and onnxruntime refuses an input it does not know
        feed = {name: value.numpy() for name, value in sample.items() if name in declared}
        actual = session.run(wrapper.output_names, feed)
        diff = scale = 0.0
        for name, want, got in zip(wrapper.output_names, expected, actual):
            if tuple(got.shape) != tuple(want.shape):
                raise OnnxMismatchError(
                    f"onnxruntime's {name} has shape {tuple(got.shape)} at batch {batch_size} x {seq_len}, PyTorch's "
                    f"{tuple(want.shape)}: the exported graph fixed a shape it should not have"
                )
            got = torch.from_numpy(got)
            for side, values in (("PyTorch", want), ("onnxruntime", got)):
                if not bool(torch.isfinite(values).all()):  # max(0.0, nan) is 0.0: NaN would read as a perfect match
                    raise OnnxMismatchError(
                        f"{side}'s {name} holds NaN or inf at batch {batch_size} x {seq_len}: the export cannot be "
                        + ("checked; fix the model's weights first" if side == "PyTorch" else "trusted")
                        + "; nothing was written"
                    )
            if want.numel():
                diff = max(diff, float((got - want).abs().max()))
                scale = max(scale, float(want.abs().max()))
        checks.append({"batch_size": batch_size, "seq_len": seq_len, "max_abs_diff": diff, "tolerance": atol + rtol * scale})
    return checks


def graph_inputs(onnx: Any, path: Path) -> list[str]:
    """The inputs the exported graph declares, in order: those of the model it reads (no `attention_mask` for a
    model with no attention head left, since nothing attends)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {initializer.name for initializer in graph.initializer}
    return [graph_input.name for graph_input in graph.input if graph_input.name not in initializers]


def _check_exportable(model: nn.Module) -> None:
    """Refuse what PyTorch's exporter cannot take: it dies (SIGFPE, no Python error) reshaping the zero-size
    attention of a layer that computes attention with no head (XLNet; other families get an `EmptyAttention`)."""
    adapter = get_adapter(model)
    for position, layer in enumerate(adapter.get_layers(model)):
        if adapter.has_attention(layer) and adapter.layer_widths(layer)[0] == 0:
            raise PruningError(
                f"layer {position} computes attention with no head left, and PyTorch's ONNX exporter crashes on that "
                f"({model.config.model_type}); keep at least one head there to export it"
            )


def _load(model_or_dir: Any) -> tuple[nn.Module, Any, str]:
    """(fp32 model in eval mode, its tokenizer or None, a name for the report)."""
    if isinstance(model_or_dir, nn.Module):
        model = model_or_dir
        if not hasattr(model, "config") or not hasattr(model, "save_pretrained"):
            raise PruningError(f"expected a transformers PreTrainedModel or a checkpoint folder, got {type(model).__name__}")
        dtypes = {parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()}
        if dtypes - {torch.float32}:
            raise PruningError(
                f"ONNX export runs in float32 and the model is {', '.join(sorted(map(str, dtypes)))}: export model.float()"
            )
        return model, None, getattr(model.config, "_name_or_path", "") or type(model).__name__

    source = resolve_model(model_or_dir, need_tokenizer=False)
    model = from_pretrained(source.name_or_path, config=copy.deepcopy(source.config), dtype=torch.float32)
    tokenizer = None
    if not source.is_local or any((Path(source.name_or_path) / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = load_tokenizer(source)
    return model, tokenizer, source.display_name


def export_onnx(
    model_or_dir: nn.Module | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    check_shapes: Sequence[tuple[int, int]] = CHECK_SHAPES,
    overwrite: bool = False,
) -> OnnxExport:
    """Export a (pruned) model or checkpoint folder to `output_dir/model.onnx` and check it in onnxruntime.

    Writes, atomically (the folder appears complete or not at all), `model.onnx` with dynamic `batch` and
    `sequence` axes (inputs `input_ids`, `attention_mask` unless no attention head is left to read it, and
    `token_type_ids` where the model has segment types, as `OnnxExport.inputs` lists them;
    outputs the model's output tensors, e.g. `logits`), `config.json` (with `config.hfprune`), the tokenizer when
    the source has one (or `tokenizer` is given), and `onnx_export.json`: what was checked and how closely.

    Before anything is written, onnxruntime runs the exported graph at `check_shapes` (default 1 x 7 and 4 x 23,
    padded rows included) and must match PyTorch: max abs difference <= `atol + rtol * max|PyTorch output|` (fp32;
    see the module notes; `rtol=0` for a plain absolute bound), otherwise `OnnxMismatchError` (a `PruningError`).
    Decoders export the forward without a KV cache.
    """
    onnx, ort = _require_onnx()
    atol = check_number("atol", atol, 0, open_low=True, expected="a positive number")
    rtol = check_number("rtol", rtol, 0, expected="a number >= 0")
    shapes = [tuple(shape) for shape in check_shapes]
    if len(shapes) < 2 or not all(len(shape) == 2 and shape[0] >= 1 and shape[1] >= 2 for shape in shapes):
        raise PruningError(f"check_shapes needs at least two (batch_size >= 1, seq_len >= 2) pairs, got {check_shapes!r}")
    # a checkpoint keeps its export inside it (CKPT/onnx), but the output must not be the checkpoint or hold it
    inputs = [] if isinstance(model_or_dir, nn.Module) else [model_or_dir]
    check_output_dir(output_dir, overwrite, inputs, inside_inputs=True)
    model, loaded_tokenizer, name = _load(model_or_dir)
    _check_exportable(model)  # also: a family hfprune knows, or one PruningError line
    tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    training = model.training
    model.eval()
    try:
        input_names = _input_names(model)
        sample = _inputs(model, input_names, *TRACE_SHAPE, seed=0)
        wrapper = _Forward(model, input_names, _output_names(model, sample))
        result = OnnxExport(
            Path(output_dir).expanduser(), opset, input_names, wrapper.output_names, float(atol), float(rtol)
        )

        def write(folder: Path) -> None:
            _export(wrapper, sample, folder / ONNX_FILE, opset)
            result.inputs = graph_inputs(onnx, folder / ONNX_FILE)  # what a caller must feed it
            result.checks = _check(onnx, ort, wrapper, folder / ONNX_FILE, shapes, atol, rtol)
            if not result.passed:
                worst = max(result.checks, key=lambda check: check["max_abs_diff"] / check["tolerance"])
                raise OnnxMismatchError(
                    f"onnxruntime differs from PyTorch by {worst['max_abs_diff']:.2e} at batch {worst['batch_size']} x "
                    f"{worst['seq_len']} (tolerance {worst['tolerance']:.2e}); nothing was written"
                )
            model.config.save_pretrained(folder)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
            report = {**result.to_dict(), "source": Path(str(name)).name, "torch": torch.__version__,
                      "onnx": onnx.__version__, "onnxruntime": ort.__version__}  # fmt: skip
            (folder / ONNX_REPORT).write_text(json.dumps(report, indent=2) + "\n")

        write_atomically(output_dir, write, overwrite=overwrite, inputs=inputs, inside_inputs=True)
    finally:
        model.train(training)
    return result


def read_onnx_report(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The `onnx_export.json` of an export folder, or None when there is none (or it cannot be read)."""
    path = Path(folder) / ONNX_REPORT
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
