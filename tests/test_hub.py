"""`push_to_hub` against a loopback Hub (tests/hub_server.py), driven by the real huggingface_hub client."""

from __future__ import annotations

import json
import logging
import random
import struct
import time
import types
from pathlib import Path

import pytest
from hub_server import FakeHub
from huggingface_hub import constants
from huggingface_hub.utils import _http as hf_http

from hfprune.export.hub import HubPushError, push_to_hub

TOKEN = "hf_FakeLoopbackToken0123456789abcdefXY"  # shaped like a real user access token
README = "---\nlicense: apache-2.0\nlibrary_name: transformers\ntags:\n- hfprune\n---\n# Pruned model\n"


def _tiny_safetensors() -> bytes:
    """A valid safetensors file with 4 KB of random (non-UTF-8) bytes, built by hand to keep the test light."""
    data = random.Random(0).randbytes(4096)
    header = json.dumps({"weight": {"dtype": "F32", "shape": [32, 32], "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.relative_to(folder).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pruned"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    (folder / "model.safetensors").write_bytes(_tiny_safetensors())
    (folder / "README.md").write_text(README)
    return folder


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A running fake Hub that `HF_ENDPOINT` points to; the import-time endpoint is a dead port, never the internet."""
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # would fail if `HF_ENDPOINT` were ignored
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeHub(token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Skip huggingface_hub's retry back-off (1 + 2 + 4 + 8 + 8 s) so persistent failures stay fast."""
    sleeps: list[float] = []
    fake_time = types.SimpleNamespace(**vars(time))
    fake_time.sleep = sleeps.append
    monkeypatch.setattr(hf_http, "time", fake_time)
    return sleeps


def _assert_one_line(err: HubPushError) -> str:
    message = str(err)
    assert "\n" not in message and message.startswith("Could not push")
    return message


def test_push_uploads_exact_bytes(hub: FakeHub, model_dir: Path):
    url = push_to_hub(model_dir, "me/pruned")

    repo = hub.repos["me/pruned"]
    assert url == f"{hub.url}/me/pruned/commit/{repo.heads['main']}"
    expected = {path: content for path, (content, _) in _snapshot(model_dir).items()}
    assert repo.files() == expected
    assert hub.paths() == [
        "/api/repos/create",
        "/api/validate-yaml",
        "/api/models/me/pruned/preupload/main",
        "/api/models/me/pruned/commit/main",
    ]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)


@pytest.mark.parametrize("private, visibility", [(True, "private"), (False, "public")])
def test_private_flag_reaches_create_request(hub: FakeHub, model_dir: Path, private: bool, visibility: str):
    push_to_hub(model_dir, "me/pruned", private=private)

    create = json.loads(hub.requests[0].body)
    assert create == {"name": "pruned", "organization": "me", "visibility": visibility}
    assert hub.repos["me/pruned"].private is private


def test_commit_message_reaches_commit(hub: FakeHub, model_dir: Path):
    push_to_hub(model_dir, "me/pruned")
    (model_dir / "config.json").write_text("{}")
    push_to_hub(model_dir, "me/pruned", commit_message="Prune 30% of heads")

    default, custom = hub.repos["me/pruned"].commits
    assert default.summary == "Upload pruned model with hfprune"
    assert custom.summary == "Prune 30% of heads"


def test_repush_is_idempotent_and_makes_no_empty_commit(hub: FakeHub, model_dir: Path):
    first = push_to_hub(model_dir, "me/pruned")
    second = push_to_hub(model_dir, "me/pruned")

    repo = hub.repos["me/pruned"]
    assert second == first
    assert len(repo.commits) == 1
    assert hub.paths("POST").count("/api/models/me/pruned/commit/main") == 1

    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))
    push_to_hub(model_dir, "me/pruned")
    assert repo.commits[-1].paths == ["config.json"]  # only the changed file is sent again


def test_push_to_branch(hub: FakeHub, model_dir: Path):
    push_to_hub(model_dir, "me/pruned", revision="pruned-50")
    push_to_hub(model_dir, "me/pruned", revision="pruned-50")  # branch exists now: still fine

    repo = hub.repos["me/pruned"]
    assert repo.files("main") == {}
    assert repo.files("pruned-50")["model.safetensors"] == _tiny_safetensors()
    assert len(repo.commits) == 1


@pytest.mark.parametrize("failing", ["/api/repos/create", "/preupload/", "/commit/"])
def test_server_error_is_reported_and_retry_succeeds(
    hub: FakeHub, model_dir: Path, no_backoff_sleep: list[float], failing: str
):
    before = _snapshot(model_dir)
    hub.fail_next(100, status=500, path_contains=failing)

    with pytest.raises(HubPushError) as exc_info:
        push_to_hub(model_dir, "me/pruned")

    message = _assert_one_line(exc_info.value)
    assert f"{hub.url} failed (HTTP 500" in message and "Nothing local was changed" in message
    assert _snapshot(model_dir) == before
    assert not hub.repos.get("me/pruned") or not hub.repos["me/pruned"].commits

    hub.clear_faults()
    push_to_hub(model_dir, "me/pruned")
    assert hub.repos["me/pruned"].files()["model.safetensors"] == _tiny_safetensors()
    assert _snapshot(model_dir) == before


def test_transient_server_error_is_retried_by_the_client(hub: FakeHub, model_dir: Path, no_backoff_sleep: list[float]):
    hub.fail_next(2, status=503, path_contains="/commit/")

    push_to_hub(model_dir, "me/pruned")

    assert len(no_backoff_sleep) == 2
    assert len(hub.repos["me/pruned"].commits) == 1


def test_connection_refused(hub: FakeHub, model_dir: Path):
    before = _snapshot(model_dir)
    hub.stop()

    with pytest.raises(HubPushError) as exc_info:
        push_to_hub(model_dir, "me/pruned")

    message = _assert_one_line(exc_info.value)
    assert f"could not reach {hub.url} (ConnectError" in message and "HF_ENDPOINT" in message
    assert _snapshot(model_dir) == before


def test_dropped_connections(hub: FakeHub, model_dir: Path, no_backoff_sleep: list[float]):
    hub.drop_next(100, path_contains="/preupload/")

    with pytest.raises(HubPushError) as exc_info:
        push_to_hub(model_dir, "me/pruned")

    assert f"could not reach {hub.url} (RemoteProtocolError" in _assert_one_line(exc_info.value)


def test_rejected_token(hub: FakeHub, model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SomeOtherTokenThatTheHubRejects0123")

    with pytest.raises(HubPushError) as exc_info:
        push_to_hub(model_dir, "me/pruned")

    message = _assert_one_line(exc_info.value)
    assert "HTTP 401" in message and "hf auth login" in message and "SomeOtherToken" not in message


def test_explicit_token_and_saved_login(hub: FakeHub, model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubPushError, match="HTTP 401"):
        push_to_hub(model_dir, "me/pruned")  # not logged in at all

    push_to_hub(model_dir, "me/explicit", token=TOKEN)

    token_path = Path(constants.HF_TOKEN_PATH)
    token_path.parent.mkdir(parents=True)
    token_path.write_text(TOKEN)
    push_to_hub(model_dir, "me/saved")

    assert {"me/explicit", "me/saved"} <= set(hub.repos)


def test_token_never_leaks(
    hub: FakeHub,
    model_dir: Path,
    no_backoff_sleep: list[float],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
):
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # the most verbose the client gets
    caplog.set_level(logging.DEBUG)
    push_to_hub(model_dir, "me/pruned")
    # A server whose error text echoes the token: it must be scrubbed, and the raw error not chained.
    hub.fail_next(100, status=500, path_contains="/commit/", message=f"bad request from Bearer {TOKEN}")
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(HubPushError) as exc_info:
        push_to_hub(model_dir, "me/pruned")

    assert TOKEN not in str(exc_info.value) and "Bearer ***" in str(exc_info.value)
    assert exc_info.value.__cause__ is None
    out, err = capfd.readouterr()
    assert TOKEN not in caplog.text + out + err
    assert "Retrying" in caplog.text  # logs were really captured
    for repo in hub.repos.values():
        assert all(TOKEN.encode() not in content for content in repo.files().values())
    assert all(TOKEN.encode() not in request.body for request in hub.requests)


def test_missing_folder_or_no_weights(hub: FakeHub, tmp_path: Path):
    with pytest.raises(HubPushError, match="does not exist"):
        push_to_hub(tmp_path / "nope", "me/pruned")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(HubPushError, match="no model weights"):
        push_to_hub(tmp_path / "empty", "me/pruned")

    assert hub.requests == []  # failed before any network call


# ---- the card that travels with the model (issue 11) ------------------------------------------------------
@pytest.fixture
def pruned_dir(tmp_path: Path) -> Path:
    """A real pruned tiny BERT saved with save_pretrained: config.hfprune, weights, no README.md."""
    from conftest import tiny_model

    import hfprune

    model = tiny_model("bert")
    hfprune.prune_heads(model, {0: [1, 2]})
    hfprune.drop_layers(model, [2])
    folder = tmp_path / "tiny-pruned"
    model.save_pretrained(folder)
    return folder


def _card(repo) -> "ModelCard":
    from huggingface_hub import ModelCard

    return ModelCard(repo.files()["README.md"].decode())


def test_push_without_readme_adds_a_structure_card_in_the_same_commit(hub: FakeHub, pruned_dir: Path):
    before = _snapshot(pruned_dir)
    push_to_hub(pruned_dir, "me/tiny-pruned")

    repo = hub.repos["me/tiny-pruned"]
    card = _card(repo)
    assert "hfprune" in card.data.tags and card.data.base_model is None  # nothing says where it came from
    assert "### Surviving attention heads per layer" in card.text and "| 2 | 0 | layer dropped | 0 |" in card.text
    assert 'hfprune.from_pretrained("me/tiny-pruned")' in card.text and "No evaluation was run." in card.text
    assert repo.files()["heads.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert {path: content for path, (content, _) in before.items()}.items() <= repo.files().items()
    assert len(repo.commits) == 1 and set(repo.commits[0].paths) == {*before, "README.md", "heads.png"}
    assert _snapshot(pruned_dir) == before  # bytes and mtimes: the local folder was only read
    assert not (pruned_dir / "README.md").exists()


def test_push_card_comes_from_the_stored_results(hub: FakeHub, pruned_dir: Path):
    from hfprune.constants import RESULTS_FILE
    from hfprune.export.card_source import card_inputs

    stored = card_inputs(
        base_model="google-bert/bert-base-uncased", task="sst2", metrics_before={"accuracy": 0.91},
        metrics_after={"accuracy": 0.9}, speed=None, importance=None, command="hfprune prune google-bert/bert-base-uncased",
        pruning={"recovery_epochs": 1.0}, base_num_parameters=None, finetuned_first=False, repo_id="elsewhere/old-name",
    )  # fmt: skip
    (pruned_dir / RESULTS_FILE).write_text(json.dumps({"card": stored}))
    before = _snapshot(pruned_dir)

    push_to_hub(pruned_dir, "me/tiny-sst2")

    card = _card(hub.repos["me/tiny-sst2"])
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("GLUE SST-2", 0.9)]
    assert "| validation | accuracy | 0.9100 | 0.9000 | -0.0100 |" in card.text
    assert 'hfprune.from_pretrained("me/tiny-sst2")' in card.text  # the repo it is pushed to, not the stored one
    assert "every number on this card is in `hfprune_results.json`" in card.text
    assert _snapshot(pruned_dir) == before


def test_no_card_pushes_the_folder_as_it_is(hub: FakeHub, pruned_dir: Path):
    before = _snapshot(pruned_dir)
    push_to_hub(pruned_dir, "me/tiny-pruned", card=False)

    assert hub.repos["me/tiny-pruned"].files() == {path: content for path, (content, _) in before.items()}
    assert "/api/validate-yaml" not in hub.paths()  # no README.md was sent
    assert _snapshot(pruned_dir) == before


def test_repush_with_a_generated_card_makes_no_new_commit(hub: FakeHub, pruned_dir: Path):
    first = push_to_hub(pruned_dir, "me/tiny-pruned")
    second = push_to_hub(pruned_dir, "me/tiny-pruned")

    assert second == first and len(hub.repos["me/tiny-pruned"].commits) == 1  # the card renders identically


def test_a_folder_that_is_not_an_hfprune_model_gets_no_card(hub: FakeHub, model_dir: Path):
    (model_dir / "README.md").unlink()  # config.json without an hfprune record
    push_to_hub(model_dir, "me/plain")

    assert "README.md" not in hub.repos["me/plain"].files()


def test_a_card_that_cannot_be_made_fails_before_any_network_call(hub: FakeHub, model_dir: Path):
    (model_dir / "README.md").unlink()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert", "hfprune": {"kept_layers": [0]}}))
    before = _snapshot(model_dir)

    with pytest.raises(HubPushError) as exc_info:
        push_to_hub(model_dir, "me/broken")

    assert "model card could not be made" in _assert_one_line(exc_info.value) and "--no-card" in str(exc_info.value)
    assert hub.requests == [] and _snapshot(model_dir) == before


def test_pruning_trainer_push_to_hub_uploads_the_hfprune_card(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch
    from conftest import tiny_model
    from huggingface_hub import ModelCard
    from transformers import default_data_collator

    from hfprune.pruning_config import PruningArguments
    from hfprune.training.trainer import PruningTrainer

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # transformers' Trainer uses the import-time endpoint
    ids = torch.randint(3, 64, (16, 8), generator=torch.Generator().manual_seed(0))
    examples = [{"input_ids": row, "attention_mask": torch.ones(8, dtype=torch.long), "labels": int(row[0] % 3)} for row in ids]
    args = PruningArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, target_head_sparsity=0.5, recovery_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, hub_model_id="me/trained-pruned",
    )  # fmt: skip
    trainer = PruningTrainer(model=tiny_model("bert"), args=args, train_dataset=examples, data_collator=default_data_collator)
    trainer.train()
    trainer.push_to_hub()

    files = hub.repos["me/trained-pruned"].files()
    card = ModelCard(files["README.md"].decode())
    assert "hfprune" in card.data.tags and "### Surviving attention heads per layer" in card.text
    assert 'hfprune.from_pretrained("me/trained-pruned")' in card.text
    assert "heads.png" in files and "model.safetensors" in files
