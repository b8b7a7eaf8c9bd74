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
    from hfprune.trainer import L0_GATES_NAME, PRUNING_STATE_NAME, PruningArguments, restore_structure

    from hfprune import constants, surgery
    from hfprune.tasks import TaskData as moved_task_data

    assert PruneResult is moved_result and TaskData is moved_task_data
    assert restore_structure is surgery.restore_structure and LAYER_STRATEGIES is constants.LAYER_STRATEGIES
    assert (PRUNING_STATE_NAME, L0_GATES_NAME) == (constants.PRUNING_STATE_FILE, constants.L0_GATES_FILE)
    assert PruningArguments is hfprune.PruningConfig
    assert all(callable(f) for f in (evaluate_model, load_task_data, micro_batches, work_dir_for))


def test_every_old_module_path_imports_its_names():
    """Each entry of the alias table imports, and a moved module is the very module (monkeypatching works)."""
    import importlib

    for old, homes in hfprune.OLD_MODULE_PATHS.items():
        module = importlib.import_module(f"hfprune.{old}")
        if len(homes) == 1:
            assert module is importlib.import_module(f"hfprune.{homes[0]}"), old
            assert module.__spec__.name == f"hfprune.{homes[0]}"  # the real spec, not the alias's
        for home in homes:
            real = importlib.import_module(f"hfprune.{home}")
            for name in getattr(real, "__all__", ()):
                assert getattr(module, name) is getattr(real, name), f"hfprune.{old}.{name}"
    from hfprune.scores import head_importance, mean_loss, normalize_per_layer, score_units
    from hfprune.surgery import prune_heads, restore_structure

    from hfprune.engine.arch.base import ArchAdapter

    assert importlib.import_module("hfprune.arch.base").ArchAdapter is ArchAdapter  # one copy of the class, not two
    assert hfprune.head_importance is head_importance and hfprune.score_units is score_units
    assert restore_structure is importlib.import_module("hfprune.engine.restore").restore_structure
    assert callable(mean_loss) and callable(normalize_per_layer) and prune_heads is hfprune.prune_heads


# the floors of the house: a module may import only from its own floor or below
FLOORS = {
    "": 0, "engine": 1, "scoring": 2, "measure": 2, "tasks": 3, "planning": 4, "reconstruction": 4, "io": 5, "export": 6,
    "training": 7, "streaming": 7, "jobs": 8,
}  # fmt: skip


def _imports_of_package() -> dict[str, set[str]]:
    import ast
    from pathlib import Path

    root = Path(hfprune.__file__).parent
    edges = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)] + ([node.module] if node.module else [])
                targets.add(".".join(base))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfprune"):
                targets.add(node.module)
        edges[name] = targets
    return edges


def _floor(module: str) -> tuple[str, int]:
    parts = module.split(".")
    room = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ""
    return room, FLOORS[room]


def test_imports_run_down_the_floors_only():
    upward = []
    for module, targets in _imports_of_package().items():
        if module == "hfprune":  # the lazy public face names every floor
            continue
        room, floor = _floor(module)
        for target in targets:
            if target == "hfprune" or target.startswith(f"hfprune.{room}.") and room:
                continue
            target_room, target_floor = _floor(target)
            if target_floor > floor or (target_floor == floor and target_room != room):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_every_public_name_of_every_face_resolves():
    import importlib

    for name in hfprune.__all__:
        assert getattr(hfprune, name) is not None, name
    for package in hfprune.SUBPACKAGES:
        face = importlib.import_module(f"hfprune.{package}")
        for name in face.__all__:
            assert getattr(face, name) is not None, f"hfprune.{package}.{name}"
