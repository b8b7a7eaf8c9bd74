"""`hfprune convert`: a transformers-4 checkpoint with `config.pruned_heads` written anew as a transformers-5
checkpoint that hfprune loads (the config reading itself is `hfprune.io.v4`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import PruningError
from ..io.loading import from_pretrained
from ..io.output import check_output_dir, write_atomically
from ..io.v4 import v4_pruned_heads

# Files of a source checkpoint that a conversion writes anew; everything else (tokenizer, generation config,
# card) is copied as it is.
_REWRITTEN = ("config.json", "model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
              "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")  # fmt: skip


@dataclass
class Conversion:
    """What `convert_checkpoint` wrote: the folder, and the heads transformers 4 had removed (original indices)."""

    output_dir: Path
    pruned_heads: dict[int, list[int]]


def convert_checkpoint(source_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Conversion:
    """Write a transformers-4 pruned checkpoint (`config.pruned_heads`) as one that transformers 5 loads with hfprune.

    The new folder holds the weights and a config with `config.hfprune` instead of `pruned_heads` (stock
    `AutoModel*.from_pretrained` loads it too where the pruned shapes are the same in every layer); every other
    file of the source (tokenizer, generation config, card) is copied. Written atomically: OUT appears complete or
    not at all. Reading the converted folder with `hfprune.from_pretrained` gives the logits transformers 4 gave.
    """
    from transformers import AutoConfig


    source_dir = Path(source_dir).expanduser()
    if not (source_dir / "config.json").is_file():
        raise PruningError(f"{source_dir} is not a model directory (no config.json); convert reads a local folder")
    pruned = v4_pruned_heads(AutoConfig.from_pretrained(source_dir))
    if not pruned:
        raise PruningError(
            f"{source_dir} has no transformers-4 pruned_heads in its config: there is nothing to convert "
            "(hfprune.from_pretrained loads it as it is)"
        )
    output_dir = check_output_dir(output_dir, overwrite, [source_dir])  # --overwrite must never delete the source
    model = from_pretrained(source_dir)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        for path in sorted(source_dir.iterdir()):
            if path.is_file() and not any(path.match(pattern) for pattern in _REWRITTEN):
                shutil.copy2(path, folder / path.name)

    write_atomically(output_dir, write, overwrite=overwrite, inputs=[source_dir])
    return Conversion(output_dir, pruned)
