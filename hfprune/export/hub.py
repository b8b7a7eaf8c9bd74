"""Push a pruned model folder to the Hugging Face Hub.

A thin layer over `HfApi.create_repo` + `HfApi.upload_folder`. It adds what a CLI user needs on top: the endpoint is
read when the push happens, every failure becomes one actionable `HubPushError` line, the token never shows up in
a message, and a pruned folder without a README.md gets hfprune's model card in the same commit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
)

from ..constants import README_FILE
from ..errors import PruningError
from .card import regenerate_model_card

try:
    from httpx2 import TransportError
except ImportError:  # huggingface_hub 1.x is built on httpx
    from httpx import TransportError

logger = logging.getLogger(__name__)

__all__ = ["ErrorsOnly", "HubPushError", "check_repo_id", "needs_card", "push_to_hub", "quiet_retries"]

# What `save_pretrained` (or a GGUF export) leaves behind; a folder without any of these is not worth pushing.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")  # user access tokens, as a safety net
_RETRY_HINT = "Nothing local was changed; re-run the push to retry (files already on the Hub are skipped)."


class HubPushError(RuntimeError):
    """A push to the Hub failed. The message is a single line, token-free, and says what to do next."""


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload pruned model with hfprune",
    token: str | None = None,
    revision: str | None = None,
    card: bool = True,
) -> str:
    """Upload `folder` (a `save_pretrained` output) to the model repo `repo_id` and return the commit URL.

    The repo is created when missing (`private` only applies then) and `revision`, a branch name, is created from
    `main` when missing. Files identical to the ones on the Hub are skipped, so pushing the same folder twice makes
    no new commit and an interrupted push can simply be re-run. The local folder is only read.

    With `card=True` (the default), a pruned folder (`config.hfprune`) without a README.md gets hfprune's model card
    in the same commit: from `hfprune_results.json` when the folder has one, else a card of its structure, with
    loading code for `repo_id`. It is rendered in a temporary folder, never in `folder`.

    `token=None` lets `huggingface_hub` pick `HF_TOKEN` or the saved login. `HF_ENDPOINT` is read now, not when
    `huggingface_hub` was imported.

    Raises:
        PruningError: `repo_id` is not a valid Hub repo id (bad input; nothing was sent).
        HubPushError: the folder holds no model, its card could not be made, or the Hub could not be reached or
            refused the push.
    """
    folder = Path(folder).expanduser()
    check_repo_id(repo_id)
    _check_folder(folder)
    with tempfile.TemporaryDirectory(prefix="hfprune-push-") as staging:
        upload = _with_card(folder, repo_id, Path(staging)) if card and needs_card(folder) else folder
        return _upload(folder, upload, repo_id, private=private, commit_message=commit_message, token=token, revision=revision)


def needs_card(folder: str | Path) -> bool:
    """Whether `push_to_hub(..., card=True)` adds a card: a pruned model folder (its config.json has an `hfprune`
    record) without a README.md."""
    folder = Path(folder)
    if (folder / README_FILE).exists() or not (folder / "config.json").is_file():
        return False
    try:
        return "hfprune" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _with_card(folder: Path, repo_id: str, staging: Path) -> Path:
    """A folder to upload: `folder`'s files (linked, not copied, where the OS allows) plus the card and the
    pictures it links that `folder` lacks. `folder` is only read."""
    card_dir, upload = staging / "card", staging / "upload"
    try:
        regenerate_model_card(folder, output_dir=card_dir, repo_id=repo_id)
    except Exception as err:
        raise HubPushError(
            f"Could not push '{folder}': its model card could not be made ({type(err).__name__}: {_one_line(str(err))}). "
            "Write one with `hfprune card`, or push with --no-card (card=False)."
        ) from err
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _link(path, upload / path.relative_to(folder))
    for path in card_dir.iterdir():
        if not (upload / path.name).exists():
            shutil.move(str(path), upload / path.name)
    return upload


def _link(source: Path, target: Path) -> None:
    """`target` -> `source` as a symlink (no copy of the weights), or a copy where symlinks are not allowed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, target)


class ErrorsOnly(logging.Filter):
    """Let only errors through a handler: what a one-line failure already says, its retries do not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextmanager
def quiet_retries() -> Iterator[None]:
    """huggingface_hub prints each retry of a failing request on two lines (a Hub outage: 11 lines) and may warn
    before it gives up; a push turns that failure into one line that says to re-run it. While the push runs, its
    own console handler prints errors only and its warnings are ignored. The records still reach the caller's
    logging (they propagate past the filtered handler), and everything is restored after."""
    handlers = list(logging.getLogger("huggingface_hub").handlers)
    errors_only = ErrorsOnly()
    for handler in handlers:
        handler.addFilter(errors_only)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(errors_only)


def _upload(
    folder: Path, upload: Path, repo_id: str, *, private: bool, commit_message: str, token: str | None, revision: str | None
) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with quiet_retries():
            return _create_and_upload(api, upload, repo_id, private, commit_message, revision, folder)
    except Exception as err:
        secret = token or _resolved_token()
        message = _scrub(f"Could not push '{folder}' to '{repo_id}': {_reason(err, api.endpoint)}", secret)
        # Keep the original traceback for debugging unless its text would reveal the token.
        raise HubPushError(message) from (None if _leaks(err, secret) else err)


def _create_and_upload(
    api: HfApi, upload: Path, repo_id: str, private: bool, commit_message: str, revision: str | None, folder: Path
) -> str:
    """The network part of a push: the repo (and branch) when missing, then one commit of `upload`."""
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_url.repo_id,  # fully qualified, even if `repo_id` had no namespace
        folder_path=upload,
        commit_message=commit_message,
        revision=revision,
    )
    logger.info("Pushed %s to %s", folder, commit.commit_url)
    return commit.commit_url


def check_repo_id(repo_id: str) -> str:
    """A repo id the Hub accepts (`name` or `namespace/name`), or a `PruningError` (bad input) before any network call."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PruningError(f"invalid Hub repo id: {str(error).splitlines()[0]}") from None
    return repo_id


def _check_folder(folder: Path) -> None:
    """Fail before any network call, so a typo in the path costs nothing."""
    hint = "Save the pruned model there first (`model.save_pretrained(folder)`)."
    if not folder.exists():
        raise HubPushError(f"Could not push '{folder}': it does not exist. {hint}")
    if not folder.is_dir():
        raise HubPushError(f"Could not push '{folder}': it is not a directory. {hint}")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise HubPushError(f"Could not push '{folder}': it has no model weights ({', '.join(WEIGHT_PATTERNS)}). {hint}")


def _reason(err: Exception, endpoint: str) -> str:
    """Describe `err` and the next step in one line."""
    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the Hub cannot be reached. Unset it and re-run the push."
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code
        detail = f"HTTP {status}: {_one_line(err.server_message or err.response.reason_phrase)}"
        if status == 401:
            return f"{endpoint} rejected the credentials ({detail}). Run `hf auth login` or set HF_TOKEN, then retry."
        if status == 403:
            return f"the token cannot write to this repo ({detail}). Use a token with write access, then retry."
        if status == 404:
            return f"repo or revision not found ({detail}). Check the repo id and revision, then retry."
        if status in (408, 429) or status >= 500:
            return f"{endpoint} failed ({detail}). {_RETRY_HINT}"
        return f"{endpoint} rejected the push ({detail})."
    if isinstance(err, TransportError):
        return (
            f"could not reach {endpoint} ({type(err).__name__}: {_one_line(str(err))}). "
            f"Check the network connection and HF_ENDPOINT. {_RETRY_HINT}"
        )
    if isinstance(err, HFValidationError):
        return f"invalid repo id ({_one_line(str(err))})."
    if isinstance(err, ValueError) and "README.md" in str(err):
        return f"the Hub rejected README.md ({_one_line(str(err))}). Fix its YAML front-matter, then retry."
    return f"{type(err).__name__}: {_one_line(str(err))}. {_RETRY_HINT}"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _resolved_token() -> str | None:
    """The token `huggingface_hub` sent when none was passed; only used to scrub it from messages."""
    try:
        return get_token()
    except Exception:
        return None


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return _TOKEN_PATTERN.sub("hf_***", text)


def _leaks(err: BaseException | None, secret: str | None) -> bool:
    """Whether any exception in the chain of `err` mentions a token."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if _scrub(str(err), secret) != str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
