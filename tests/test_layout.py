"""The package's shape: what `import hfprune` costs, and the old import paths the redesign kept."""

import os
import subprocess
import sys
import textwrap

import hfprune

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
HEAVY = ("datasets", "sklearn", "scipy", "matplotlib")


def test_engine_calls_import_no_data_or_plotting_packages():
    script = textwrap.dedent(
        f"""
        import sys
        import hfprune
        for name in ("prune_heads", "prune_ffn", "drop_layers", "make_head_mask", "get_record", "from_pretrained"):
            getattr(hfprune, name)
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import hfprune + engine names loaded {out.stdout.strip()}"


def test_old_import_paths_still_work():
    from hfprune.pipeline import PruneResult, TaskData, evaluate_model, load_task_data, micro_batches, work_dir_for
    from hfprune.plan import LAYER_STRATEGIES
    from hfprune.results import PruneResult as moved_result
    from hfprune.tasks import TaskData as moved_task_data
    from hfprune.trainer import L0_GATES_NAME, PRUNING_STATE_NAME, PruningArguments, restore_structure
    from hfprune import constants, surgery

    assert PruneResult is moved_result and TaskData is moved_task_data
    assert restore_structure is surgery.restore_structure and LAYER_STRATEGIES is constants.LAYER_STRATEGIES
    assert (PRUNING_STATE_NAME, L0_GATES_NAME) == (constants.PRUNING_STATE_FILE, constants.L0_GATES_FILE)
    assert PruningArguments is hfprune.PruningConfig
    assert all(callable(f) for f in (evaluate_model, load_task_data, micro_batches, work_dir_for))
