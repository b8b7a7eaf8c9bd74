"""`hfprune push`: share a pruned checkpoint on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import EXIT_FAILED, fail


def push(
    folder: Path = typer.Argument(..., help="The checkpoint directory (e.g. what `hfprune prune` wrote)."),
    repo_id: str = typer.Argument(..., help="Hub repo id, e.g. me/bert-mnli-pruned (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private (only applies when it is created)."),
    commit_message: str = typer.Option("Upload pruned model with hfprune", "--commit-message", "-m", help="Commit message."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (created from main if missing)."),
    card: bool = typer.Option(True, "--card/--no-card", help="Add hfprune's model card when FOLDER has no README.md (FOLDER itself is not changed)."),
) -> None:
    """Upload FOLDER to the Hub repo REPO_ID. Re-running it is safe: unchanged files are skipped.

    A pruned FOLDER without a README.md gets hfprune's model card (from hfprune_results.json when present, else a
    card of its structure) in the same commit; --no-card skips it. Uses HF_TOKEN or the saved `hf auth login`, and
    HF_ENDPOINT when set. The token is never printed.

    Example: hfprune push ./bert-mnli-pruned me/bert-mnli-pruned --private
    """
    from hfprune.errors import PruningError
    from hfprune.export.hub import WEIGHT_PATTERNS, HubPushError, check_repo_id, needs_card, push_to_hub

    # Bad input (exit 2) is told apart from a failed upload (exit 1) before any network call.
    try:
        check_repo_id(repo_id)
    except PruningError as error:
        fail(str(error))
    if not folder.is_dir():
        fail(f"{folder} is not a directory; give the folder that `hfprune prune` (or save_pretrained) wrote")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        fail(f"{folder} has no model weights ({', '.join(WEIGHT_PATTERNS)}); save the model there first")
    with_card = card and needs_card(folder)
    try:
        url = push_to_hub(folder, repo_id, private=private, commit_message=commit_message, revision=revision, card=card)
    except HubPushError as error:
        fail(str(error), EXIT_FAILED)
    typer.echo(f"pushed {folder} to {repo_id}{' with a generated model card (README.md)' if with_card else ''}: {url}")
