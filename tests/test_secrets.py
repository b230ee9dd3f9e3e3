"""The secrets activities against fakes of GCP Secret Manager, RunPod and Modal, driven by the
real client libraries: values land, a re-run changes nothing, bad input writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from flyaway.activities.secrets import activities as secrets_activities
from flyaway.activities.secrets.activities import check_secrets, sync_secrets
from flyaway.activities.secrets.base import digest_key
from flyaway.failures import WorkerActivityEnvironment
from flyaway.models.plan import parse_plan
from flyaway.models.secrets import SecretOutcome, SecretsReport, SecretsStage, secret_digest
from tests.fakes.fly_machines import FakeFlyMachinesAPI
from tests.fakes.gcp_secret_manager import FakeSecretManager
from tests.fakes.modal_control import FakeModal
from tests.fakes.runpod_secrets import FakeRunpodSecrets

PROJECT = "flyaway-test"
VALUES = {"HF_TOKEN": "hf_live_5f0c2d9e8a7b", "DATABASE_URL": "postgres://app:pa ss@db/app?x=1&y=2"}


def run(activity: Any, stage: SecretsStage) -> SecretsReport:
    return asyncio.run(WorkerActivityEnvironment().run(activity, stage))


def failure(activity: Any, stage: SecretsStage) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        run(activity, stage)
    return raised.value


def write_dotenv(path: Path, values: dict[str, str]) -> str:
    path.write_text("".join(f"{name}='{value}'\n" for name, value in values.items()))
    return str(path)


def stage(source: dict[str, Any], destination: dict[str, Any], **fields: Any) -> SecretsStage:
    return SecretsStage.model_validate({"source": source, "destination": destination, **fields})


def outcomes(report: SecretsReport) -> dict[str, SecretOutcome]:
    return {result.name: result.outcome for result in report.secrets}


@pytest.fixture
def gcp() -> Iterator[FakeSecretManager]:
    with FakeSecretManager() as fake:
        yield fake


@pytest.fixture
def runpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunpodSecrets]:
    with FakeRunpodSecrets() as fake:
        monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
        yield fake


@pytest.fixture
def modal_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModal]:
    with FakeModal() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        yield fake


def gcp_destination(fake: FakeSecretManager, **fields: Any) -> dict[str, Any]:
    return {"kind": "gcp_secret_manager", "project": PROJECT, "endpoint": fake.endpoint, **fields}


# -- each destination through its fake ------------------------------------------------------------

def test_gcp_creates_then_leaves_unchanged_then_adds_a_version_for_a_changed_value(
        gcp: FakeSecretManager, tmp_path: Path) -> None:
    dotenv = tmp_path / "app.env"
    plan = stage({"kind": "dotenv", "path": write_dotenv(dotenv, VALUES)}, gcp_destination(gcp, prefix="app-"),
                 rename={"DATABASE_URL": "DB_URL"})

    first = run(sync_secrets, plan)
    assert outcomes(first) == {"DATABASE_URL": "created", "HF_TOKEN": "created"}
    assert gcp.value(PROJECT, "app-HF_TOKEN") == VALUES["HF_TOKEN"].encode()
    assert gcp.value(PROJECT, "app-DB_URL") == VALUES["DATABASE_URL"].encode()
    assert first.references() == {"HF_TOKEN": f"projects/{PROJECT}/secrets/app-HF_TOKEN/versions/1",
                                  "DB_URL": f"projects/{PROJECT}/secrets/app-DB_URL/versions/1"}
    assert {r.name: r.digest for r in first.secrets} == {n: secret_digest(v, digest_key(plan.destination))
                                                              for n, v in VALUES.items()}

    again = run(sync_secrets, plan)
    assert set(outcomes(again).values()) == {SecretOutcome.unchanged}
    assert gcp.version_count(PROJECT) == 2
    assert again.references() == first.references()

    write_dotenv(dotenv, {**VALUES, "HF_TOKEN": "hf_rotated_99d1c0"})
    third = run(sync_secrets, plan)
    assert outcomes(third) == {"DATABASE_URL": "unchanged", "HF_TOKEN": "updated"}
    assert gcp.value(PROJECT, "app-HF_TOKEN") == b"hf_rotated_99d1c0"
    assert third.references()["HF_TOKEN"].endswith("/versions/2")
    assert gcp.version_count(PROJECT) == 3


def test_gcp_check_reports_what_a_sync_would_do_and_writes_nothing(gcp: FakeSecretManager, tmp_path: Path) -> None:
    plan = stage({"kind": "dotenv", "path": write_dotenv(tmp_path / ".env", VALUES)}, gcp_destination(gcp))
    report = run(check_secrets, plan)
    assert outcomes(report) == {"DATABASE_URL": "created", "HF_TOKEN": "created"}
    assert gcp.secrets == {}


def test_dotenv_values_are_taken_literally_without_variable_expansion(
        modal_fake: FakeModal, tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text('PLAIN=abc${HOME}def\nQUOTED="x $HOME ${PATH}"\n')
    plan = stage({"kind": "dotenv", "path": str(dotenv)}, {"kind": "modal", "secret_name": "literal"})
    assert outcomes(run(check_secrets, plan)) == {"PLAIN": "created", "QUOTED": "created"}
    assert modal_fake.secret_objects == {} and modal_fake.dict_objects == {}  # a check writes nothing
    run(sync_secrets, plan)
    assert modal_fake.secrets("literal") == {"PLAIN": "abc${HOME}def", "QUOTED": "x $HOME ${PATH}"}


def test_runpod_creates_then_leaves_unchanged_then_rotates(
        runpod: FakeRunpodSecrets, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in VALUES.items():
        monkeypatch.setenv(name, value)
    plan = stage({"kind": "env", "names": list(VALUES)}, {"kind": "runpod", "api_url": runpod.api_url})

    first = run(sync_secrets, plan)
    assert outcomes(first) == {"HF_TOKEN": "created", "DATABASE_URL": "created"}
    assert runpod.values == VALUES
    assert first.references() == {"HF_TOKEN": "{{ RUNPOD_SECRET_HF_TOKEN }}",
                                  "DATABASE_URL": "{{ RUNPOD_SECRET_DATABASE_URL }}"}

    runpod.requests.clear()
    again = run(sync_secrets, plan)
    assert set(outcomes(again).values()) == {SecretOutcome.unchanged}
    assert [method for method, _ in runpod.requests] == ["GET"]

    monkeypatch.setenv("HF_TOKEN", "hf_rotated_77aa01")
    third = run(sync_secrets, plan)
    assert outcomes(third) == {"HF_TOKEN": "updated", "DATABASE_URL": "unchanged"}
    assert runpod.values["HF_TOKEN"] == "hf_rotated_77aa01"
    assert runpod.by_name("HF_TOKEN")["description"] == f"flyaway {secret_digest('hf_rotated_77aa01', digest_key(plan.destination))}"


def test_runpod_secret_made_by_hand_is_rotated_to_the_source_value(
        runpod: FakeRunpodSecrets, monkeypatch: pytest.MonkeyPatch) -> None:
    runpod.handle("POST", "/v2/account/secrets", f"Bearer {runpod.api_key}",
                  {"name": "HF_TOKEN", "value": "stale-by-hand", "description": "set in the console"})
    monkeypatch.setenv("HF_TOKEN", VALUES["HF_TOKEN"])
    report = run(sync_secrets, stage({"kind": "env", "names": ["HF_TOKEN"]},
                                     {"kind": "runpod", "api_url": runpod.api_url}))
    assert outcomes(report) == {"HF_TOKEN": "updated"}
    assert runpod.values == {"HF_TOKEN": VALUES["HF_TOKEN"]}


def test_modal_creates_then_leaves_unchanged_then_updates_one_key(modal_fake: FakeModal, tmp_path: Path) -> None:
    dotenv = tmp_path / "modal.env"
    plan = stage({"kind": "dotenv", "path": write_dotenv(dotenv, VALUES)},
                 {"kind": "modal", "secret_name": "llm-secrets"})

    first = run(sync_secrets, plan)
    assert outcomes(first) == {"DATABASE_URL": "created", "HF_TOKEN": "created"}
    assert modal_fake.secrets("llm-secrets") == VALUES
    assert first.references() == {"HF_TOKEN": "llm-secrets", "DATABASE_URL": "llm-secrets"}

    modal_fake.calls.clear()
    again = run(sync_secrets, plan)
    assert set(outcomes(again).values()) == {SecretOutcome.unchanged}
    assert "SecretUpdate" not in modal_fake.calls

    write_dotenv(dotenv, {**VALUES, "DATABASE_URL": "postgres://new@db/app"})
    third = run(sync_secrets, plan)
    assert outcomes(third) == {"DATABASE_URL": "updated", "HF_TOKEN": "unchanged"}
    assert modal_fake.secrets("llm-secrets") == {**VALUES, "DATABASE_URL": "postgres://new@db/app"}


# -- bad input: clear errors, nothing written ---------------------------------------------------------

def test_a_listed_name_missing_at_the_source_fails_before_writing(gcp: FakeSecretManager, tmp_path: Path) -> None:
    plan = stage({"kind": "dotenv", "path": write_dotenv(tmp_path / ".env", VALUES)}, gcp_destination(gcp),
                 names=["HF_TOKEN", "OPENAI_API_KEY"])
    error = failure(sync_secrets, plan)
    assert error.type == "InvalidPlan" and error.non_retryable
    assert "lacks OPENAI_API_KEY" in error.message and "nothing was written" in error.message
    assert gcp.secrets == {}


def test_on_missing_skip_reports_missing_at_source_and_moves_the_rest(
        gcp: FakeSecretManager, tmp_path: Path) -> None:
    plan = stage({"kind": "dotenv", "path": write_dotenv(tmp_path / ".env", VALUES)}, gcp_destination(gcp),
                 names=["HF_TOKEN", "OPENAI_API_KEY"], on_missing="skip")
    report = run(sync_secrets, plan)
    assert outcomes(report) == {"HF_TOKEN": "created", "OPENAI_API_KEY": "missing_at_source"}
    assert report.secrets[1].digest is None and report.secrets[1].reference is None
    assert list(gcp.secrets) == [f"projects/{PROJECT}/secrets/HF_TOKEN"]


def test_an_empty_value_fails_before_writing_any(runpod: FakeRunpodSecrets, tmp_path: Path) -> None:
    dotenv = write_dotenv(tmp_path / ".env", {**VALUES, "EMPTY_ONE": ""})
    error = failure(sync_secrets, stage({"kind": "dotenv", "path": dotenv}, {"kind": "runpod", "api_url": runpod.api_url}))
    assert error.type == "InvalidPlan"
    assert "EMPTY_ONE is empty at the source" in error.message
    assert runpod.values == {} and runpod.requests == []


@pytest.mark.parametrize("destination, bad_name, expected", [
    ("runpod", "RUNPOD_TOKEN", "prefix RunPod reserves"),
    ("gcp", "my.key", "not a Secret Manager secret id"),
    ("modal", "my-key", "not an environment variable name"),
])
def test_a_name_the_destination_rejects_fails_before_writing_any(
        destination: str, bad_name: str, expected: str, gcp: FakeSecretManager, runpod: FakeRunpodSecrets,
        modal_fake: FakeModal, tmp_path: Path) -> None:
    target = {"runpod": {"kind": "runpod", "api_url": runpod.api_url}, "gcp": gcp_destination(gcp),
              "modal": {"kind": "modal", "secret_name": "app"}}[destination]
    dotenv = write_dotenv(tmp_path / ".env", {**VALUES, bad_name: "some-value-1234"})
    error = failure(sync_secrets, stage({"kind": "dotenv", "path": dotenv}, target))
    assert error.type == "InvalidPlan" and expected in error.message
    assert gcp.secrets == {} and runpod.values == {} and modal_fake.secret_objects == {}


def test_a_destination_without_rights_is_refused_before_any_write(
        gcp: FakeSecretManager, runpod: FakeRunpodSecrets, modal_fake: FakeModal, tmp_path: Path) -> None:
    source = {"kind": "dotenv", "path": write_dotenv(tmp_path / ".env", VALUES)}
    gcp.denied.add(PROJECT)
    runpod.denied = True
    modal_fake.denied = True
    for target in (gcp_destination(gcp), {"kind": "runpod", "api_url": runpod.api_url},
                   {"kind": "modal", "secret_name": "app"}):
        error = failure(sync_secrets, stage(source, target))
        assert error.type == "AccessDenied" and error.non_retryable, target
    assert gcp.secrets == {} and runpod.values == {} and modal_fake.secret_objects == {}


def test_gcp_read_only_rights_fail_at_the_first_write(gcp: FakeSecretManager, tmp_path: Path) -> None:
    gcp.read_only.add(PROJECT)
    plan = stage({"kind": "dotenv", "path": write_dotenv(tmp_path / ".env", VALUES)}, gcp_destination(gcp))
    error = failure(sync_secrets, plan)
    assert error.type == "AccessDenied" and "roles/secretmanager.admin" in error.message
    assert gcp.secrets == {}


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    source = {"kind": "dotenv", "path": write_dotenv(tmp_path / ".env", VALUES)}
    runpod_error = failure(sync_secrets, stage(source, {"kind": "runpod"}))
    modal_error = failure(sync_secrets, stage(source, {"kind": "modal", "secret_name": "app"}))
    assert runpod_error.type == "MissingCredentials" and "RUNPOD_API_KEY" in runpod_error.message
    assert modal_error.type == "MissingCredentials" and "MODAL_TOKEN_ID" in modal_error.message


def test_a_missing_dotenv_file_is_not_found(tmp_path: Path) -> None:
    error = failure(sync_secrets, stage({"kind": "dotenv", "path": str(tmp_path / "nope.env")},
                                        {"kind": "runpod"}))
    assert error.type == "NotFound" and "nope.env" in error.message


def test_an_unexpected_error_leaves_scrubbed_and_retryable(
        gcp: FakeSecretManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = VALUES["HF_TOKEN"]

    class LeakyStore:
        def read(self, names: list[str]) -> dict[str, Any]:
            raise RuntimeError(f"upstream echoed the payload {value!r}")

        def close(self) -> None:
            pass

    monkeypatch.setattr(secrets_activities, "open_store", lambda destination: LeakyStore())
    plan = stage({"kind": "dotenv", "path": write_dotenv(tmp_path / ".env", VALUES)}, gcp_destination(gcp))
    error = failure(sync_secrets, plan)
    assert not error.non_retryable and error.type == "RuntimeError"
    assert value not in error.message and "***" in error.message
    assert error.__cause__ is None and error.__suppress_context__


# -- a Fly app: names from the API outside the app, values only inside it ----------------------------

@pytest.fixture
def fly_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFlyMachinesAPI]:
    with FakeFlyMachinesAPI("fly-token") as fly:
        fly.add_app("gpu-app")
        for name, value in VALUES.items():
            fly.add_secret("gpu-app", name, value)
        monkeypatch.setenv("FLY_API_TOKEN", "fly-token")
        monkeypatch.setenv("FLY_API_BASE_URL", fly.base_url)
        yield fly


def fly_app_source(**fields: Any) -> dict[str, Any]:
    return {"kind": "fly_app", "app": "gpu-app", "agent_image": "registry.fly.io/gpu-app:flyaway-agent",
            "agent_temporal": {"address": "temporal.example:7233"}, **fields}


def test_fly_app_check_lists_names_and_reads_the_destination_without_values(
        fly_app: FakeFlyMachinesAPI, gcp: FakeSecretManager) -> None:
    report = run(check_secrets, stage(fly_app_source(), gcp_destination(gcp)))
    assert [(r.name, r.outcome, r.digest) for r in report.secrets] == [("DATABASE_URL", None, None),
                                                                      ("HF_TOKEN", None, None)]
    assert gcp.secrets == {}
    skipped = run(check_secrets, stage(fly_app_source(), gcp_destination(gcp), names=["HF_TOKEN", "NOT_THERE"],
                                       on_missing="skip"))
    assert outcomes(skipped) == {"HF_TOKEN": None, "NOT_THERE": "missing_at_source"}


@pytest.mark.parametrize("fields, source, error_type, expected", [
    ({"names": ["HF_TOKEN", "NOT_THERE"]}, {}, "InvalidPlan", "Fly app gpu-app lacks NOT_THERE; nothing was written"),
    ({}, {"agent_temporal": {"address": "t.example:7233", "api_key_env": "UNSET_TEST_TEMPORAL_KEY"}},
     "MissingCredentials", "secrets.source.agent_temporal.api_key_env names UNSET_TEST_TEMPORAL_KEY"),
    ({}, {"agent_env": ["HF_TOKEN"]}, "InvalidPlan", "Fly app 'gpu-app' has secrets named HF_TOKEN, which the agent"),
])
def test_fly_app_check_refuses_what_would_fail_inside_the_app(
        fly_app: FakeFlyMachinesAPI, gcp: FakeSecretManager, monkeypatch: pytest.MonkeyPatch,
        fields: dict[str, Any], source: dict[str, Any], error_type: str, expected: str) -> None:
    monkeypatch.setenv("HF_TOKEN", "the worker's own")
    error = failure(check_secrets, stage(fly_app_source(**source), gcp_destination(gcp), **fields))
    assert error.type == error_type and error.non_retryable and expected in error.message
    assert VALUES["HF_TOKEN"] not in error.message


def test_fly_app_check_sees_a_destination_without_rights(fly_app: FakeFlyMachinesAPI, gcp: FakeSecretManager) -> None:
    gcp.denied.add(PROJECT)
    assert failure(check_secrets, stage(fly_app_source(), gcp_destination(gcp))).type == "AccessDenied"


def sync_in(plan: SecretsStage, names: list[str] | None) -> SecretsReport:
    return asyncio.run(WorkerActivityEnvironment().run(sync_secrets, plan, names))


def test_fly_app_values_are_read_only_inside_the_app(gcp: FakeSecretManager, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = stage(fly_app_source(), gcp_destination(gcp))
    for name, value in VALUES.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ApplicationError, match="can only be read by flyaway's agent Machine inside that app"):
        sync_in(plan, list(VALUES))
    monkeypatch.setenv("FLY_APP_NAME", "gpu-app")  # as Fly sets it in the app's Machines
    with pytest.raises(ApplicationError, match="can only be read by flyaway's agent Machine"):
        sync_in(plan, None)
    assert gcp.secrets == {}

    report = sync_in(plan, list(VALUES))
    assert outcomes(report) == {"DATABASE_URL": "created", "HF_TOKEN": "created"}
    assert gcp.value(PROJECT, "HF_TOKEN") == VALUES["HF_TOKEN"].encode()
    assert sorted(gcp.secrets) == [f"projects/{PROJECT}/secrets/{name}" for name in sorted(VALUES)], \
        "only the app's secrets move, not the rest of the env"


# -- the plan section ---------------------------------------------------------------------------------

def plan_with(secrets: dict[str, Any]) -> dict[str, Any]:
    return {"name": "p", "weights": {"source": {"kind": "local", "path": "/a"},
                                     "destination": {"kind": "local", "path": "/b"}}, "secrets": secrets}


def test_plan_accepts_a_secrets_stage() -> None:
    plan = parse_plan(plan_with({"source": {"kind": "env", "names": ["HF_TOKEN"]},
                                 "destination": {"kind": "gcp_secret_manager", "project": "my-project"}}))
    assert plan.stages_present() == ["weights", "secrets"]
    assert plan.secrets is not None and plan.secrets.names == "all"


@pytest.mark.parametrize("secrets, expected", [
    ({"source": {"kind": "env", "names": ["A"]}, "names": ["B"], "destination": {"kind": "runpod"}},
     "not among source.names"),
    ({"source": {"kind": "dotenv", "path": "/x.env"}, "names": ["A"], "rename": {"B": "C"},
      "destination": {"kind": "runpod"}}, "rename has ['B']"),
    ({"source": {"kind": "dotenv", "path": "/x.env"}, "names": ["RUNPOD_KEY"], "destination": {"kind": "runpod"}},
     "prefix RunPod reserves"),
    ({"source": {"kind": "dotenv", "path": "/x.env"}, "names": ["A", "B"], "rename": {"A": "B"},
      "destination": {"kind": "runpod"}}, "destination name of 2 secrets"),
    ({"source": {"kind": "dotenv", "path": "x.env"}, "destination": {"kind": "runpod"}}, "relative"),
    ({"source": {"kind": "dotenv", "path": "/x.env"}, "destination": {"kind": "gcp_secret_manager",
                                                                      "project": "Bad_Project"}}, "project id"),
    ({"source": {"kind": "dotenv", "path": "/x.env"}, "names": ["A"], "destination": {"kind": "vault"}},
     "unknown kind 'vault'"),
])
def test_plan_refuses_inconsistent_secrets_sections(secrets: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_plan(plan_with(secrets))
