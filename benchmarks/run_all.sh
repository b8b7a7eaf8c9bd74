#!/usr/bin/env bash
# Rerun the whole benchmark suite and rewrite benchmarks/results/ (one command).
#
#   bash benchmarks/run_all.sh            # every benchmark, full size
#   bash benchmarks/run_all.sh --quick    # smoke test: only scripts with a --quick mode, -> results/quick/
#
# Runs reproduce_papers.py, layerdrop.py and speed.py (in that order, those that exist), then any other
# benchmarks/*.py. Each script's log goes to benchmarks/.cache/logs/<script>.log. A failing script does not
# stop the others; the exit status is non-zero if any failed. Timings are only comparable on a quiet machine:
# stop other CPU-heavy work first (the scripts pin their own thread counts).
# PYTHON=... picks the interpreter (default: .venv/bin/python if present, else python).
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "usage: bash benchmarks/run_all.sh [--quick]" >&2; exit 2 ;;
  esac
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# The peer baseline (frontier.py) needs Torch-Pruning: installed beside the benchmarks, never into hfprune's venv.
if [[ ! -d benchmarks/.cache/torch-pruning/torch_pruning ]]; then
  "$PYTHON" -m pip install -q --no-deps --target benchmarks/.cache/torch-pruning torch-pruning==1.6.1
fi

ordered=(reproduce_papers.py layerdrop.py speed.py)
scripts=()
for name in "${ordered[@]}"; do [[ -f "benchmarks/$name" ]] && scripts+=("$name"); done
for path in benchmarks/*.py; do
  name=$(basename "$path")
  [[ " ${ordered[*]} " == *" $name "* ]] || scripts+=("$name")
done

mkdir -p benchmarks/.cache/logs
failed=()
for name in "${scripts[@]}"; do
  args=()
  if (( quick )); then
    if "$PYTHON" "benchmarks/$name" --help 2>/dev/null | grep -q -- "--quick"; then
      args+=(--quick)
    else
      echo "== skip $name (no --quick mode)"
      continue
    fi
  fi
  log="benchmarks/.cache/logs/${name%.py}.log"
  echo "== $name ${args[*]:-} (log: $log)"
  start=$(date +%s)
  if "$PYTHON" "benchmarks/$name" "${args[@]}" >"$log" 2>&1; then
    echo "   done in $(( $(date +%s) - start )) s"
  else
    echo "   FAILED after $(( $(date +%s) - start )) s; last lines of $log:"
    tail -n 15 "$log" | sed 's/^/   /'
    failed+=("$name")
  fi
done

if (( ${#failed[@]} )); then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all benchmarks done; results in benchmarks/results/$( (( quick )) && echo quick/ )"
