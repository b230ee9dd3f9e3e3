"""Tearing a Fly app down, one idempotent step per activity, in the only safe order.

1. ``stop``: cordon every Machine (out of the proxy's rotation, so nothing wakes it), stop the
   running ones, wait until all are stopped;
2. ``snapshot``: snapshot every volume and list its snapshots until the new one is there;
3. ``destroy``: destroy the (stopped) Machines;
4. ``release_ips``: release the public IPs;
5. ``delete_volumes`` (if the plan says so): only volumes whose snapshot from step 2 is listed;
6. ``delete_app`` (if the plan says so).

Each step reads the app's state and does only what is left, so a step repeated after a crash
at any line ends in the same state. A snapshot step that is retried finds the snapshots its
earlier attempt asked for in its heartbeat details and does not take them again. Once the app
is gone and the plan deletes it, every step has nothing to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from temporalio import activity

from flyaway.activities.fly import activity_client
from flyaway.errors import InvalidPlan, NotFound, TimedOut
from flyaway.models.teardown import MachineSummary, TeardownInventory, TeardownStage, VolumeSummary
from flyaway.providers.fly.api import Machine
from flyaway.providers.fly.client import FlyClient, MachineWaitTimeout

log = structlog.get_logger(__name__)

#: Machines in these states run, or are about to: they are stopped first
RUNNING_STATES = frozenset({"started", "starting", "created", "replacing", "updating"})
#: Machines in these states are at rest; any other is waited for until it is stopped
SETTLED_STATES = frozenset({"stopped", "suspended", "failed"})
#: Machines in these states may be destroyed without force
DESTROYABLE_STATES = frozenset({"stopped", "suspended", "failed", "created"})
#: a snapshot counts once Fly lists it in this state
SNAPSHOT_DONE_STATE = "created"
SNAPSHOT_TIMEOUT_SECONDS = 3600.0
POLL_SECONDS = 2.0


def read_inventory(client: FlyClient) -> TeardownInventory:
    """The Machines, volumes and public IPs of the client's app (the dry run prints exactly this)."""
    machines = [MachineSummary(id=m.id, name=m.name, state=m.state, region=m.region,
                               image=m.config.image if m.config else "")
                for m in client.list_machines() if m.state != "destroyed"]
    volumes = [VolumeSummary(id=v.id, name=v.name, region=v.region, size_gb=v.size_gb,
                             attached_machine_id=v.attached_machine_id) for v in client.list_volumes()]
    ips = [ip.ip for ip in client.list_ips() if not ip.is_private]
    return TeardownInventory(app=client.app, machines=machines, volumes=volumes, public_ips=ips)


@contextmanager
def app_client(stage: TeardownStage) -> Iterator[FlyClient | None]:
    """A client for the app, or None when the app is gone and the plan deletes it (all done)."""
    with activity_client(stage.app) as client:
        try:
            client.get_app()
            exists = True
        except NotFound:
            if not stage.delete_app:
                raise
            exists = False
        yield client if exists else None


def _each(remove: Callable[[str], None], ids: list[str]) -> int:
    """Remove each of ``ids``; how many there were."""
    for resource_id in ids:
        remove(resource_id)
    return len(ids)


def _live_machines(client: FlyClient) -> list[Machine]:
    return [m for m in client.list_machines() if m.state != "destroyed"]


@activity.defn(name="flyaway.fly.teardown.check")
def check_teardown(stage: TeardownStage) -> TeardownInventory:
    """The token reaches the app and may read it: the plan's check, before anything runs."""
    with activity_client(stage.app) as client:
        client.get_app()
        return read_inventory(client)


@activity.defn(name="flyaway.fly.teardown.inventory")
def teardown_inventory(stage: TeardownStage) -> TeardownInventory:
    with app_client(stage) as client:
        return TeardownInventory(app=stage.app, exists=False) if client is None else read_inventory(client)


@activity.defn(name="flyaway.fly.teardown.stop")
def stop_machines(stage: TeardownStage) -> int:
    """Cordon every Machine, stop those running, wait until all are stopped; returns how many are stopped."""
    with app_client(stage) as client:
        if client is None:
            return 0
        machines = _live_machines(client)
        for machine in machines:
            client.cordon(machine.id)
        for machine in machines:
            if machine.state in RUNNING_STATES:
                client.stop(machine.id)
        deadline = time.monotonic() + stage.stop_timeout.total_seconds()
        for machine in (m for m in machines if m.state not in SETTLED_STATES):
            try:
                client.wait_machine(machine.id, "stopped", timeout=max(1.0, deadline - time.monotonic()),
                                    progress=activity.heartbeat)
            except MachineWaitTimeout as error:
                raise TimedOut(f"{error}; teardown.stop_timeout is {stage.stop_timeout}") from None
        log.info("fly machines stopped", app=stage.app, machines=len(machines))
        return len(machines)


def _snapshot_ids(client: FlyClient, volume_id: str, *, done_only: bool) -> set[str]:
    return {s.id for s in client.list_snapshots(volume_id) if not done_only or s.status == SNAPSHOT_DONE_STATE}


@activity.defn(name="flyaway.fly.teardown.snapshot")
def snapshot_volumes(stage: TeardownStage) -> dict[str, str]:
    """Snapshot every volume and wait until each new snapshot is listed as done; volume id -> snapshot id.

    Heartbeat details hold, per volume, the snapshots that existed before this step asked for
    one; a retried attempt only waits for the new one instead of asking again.
    """
    details = activity.info().heartbeat_details
    before: dict[str, list[str]] = dict(details[0]) if details else {}
    with app_client(stage) as client:
        if client is None:
            return {}
        for volume in client.list_volumes():
            if volume.id not in before:
                before[volume.id] = sorted(_snapshot_ids(client, volume.id, done_only=False))
                client.create_snapshot(volume.id)
                activity.heartbeat(before)
        taken: dict[str, str] = {}
        deadline = time.monotonic() + SNAPSHOT_TIMEOUT_SECONDS
        while len(taken) < len(before):
            for volume_id, earlier in before.items():
                new = _snapshot_ids(client, volume_id, done_only=True) - set(earlier)
                if new and volume_id not in taken:
                    taken[volume_id] = min(new)
            if len(taken) < len(before):
                if time.monotonic() > deadline:
                    missing = sorted(set(before) - set(taken))
                    raise TimedOut(f"snapshots of volumes {missing} of Fly app '{stage.app}' were not listed as "
                                   f"done within {SNAPSHOT_TIMEOUT_SECONDS:g} s; nothing was destroyed")
                activity.heartbeat(before)
                time.sleep(POLL_SECONDS)
        log.info("fly volumes snapshotted", app=stage.app, snapshots=taken)
        return taken


@activity.defn(name="flyaway.fly.teardown.destroy")
def destroy_machines(stage: TeardownStage) -> int:
    """Destroy the stopped Machines; one that runs again (someone started it) is refused, not forced."""
    with app_client(stage) as client:
        if client is None:
            return 0
        machines = _live_machines(client)
        running = [f"{m.id} ({m.state})" for m in machines if m.state not in DESTROYABLE_STATES]
        if running:
            raise InvalidPlan(f"Machines of Fly app '{stage.app}' run again after the teardown stopped them: "
                              f"{', '.join(running)}; stop them (and find out who started them), then retry")
        return _each(client.destroy, [m.id for m in machines])


@activity.defn(name="flyaway.fly.teardown.release_ips")
def release_ips(stage: TeardownStage) -> int:
    with app_client(stage) as client:
        if client is None:
            return 0
        return _each(client.release_ip, [ip.ip for ip in client.list_ips() if not ip.is_private])


@activity.defn(name="flyaway.fly.teardown.delete_volumes")
def delete_volumes(stage: TeardownStage, snapshots: dict[str, str]) -> int:
    """Delete the volumes once Fly lists each one's snapshot from the snapshot step as done (else delete none)."""
    with app_client(stage) as client:
        if client is None:
            return 0
        volumes = client.list_volumes()
        unprotected = [v.id for v in volumes if v.id not in snapshots
                       or snapshots[v.id] not in _snapshot_ids(client, v.id, done_only=True)]
        if unprotected:
            raise NotFound(f"volumes {unprotected} of Fly app '{stage.app}' have no snapshot from this teardown; "
                           f"none was deleted")
        return _each(client.delete_volume, [v.id for v in volumes])


@activity.defn(name="flyaway.fly.teardown.delete_app")
def delete_app(stage: TeardownStage) -> bool:
    with activity_client(stage.app) as client:
        client.delete_app()
        return True


FLY_TEARDOWN_ACTIVITIES: list[Callable[..., Any]] = [
    check_teardown, teardown_inventory, stop_machines, snapshot_volumes, destroy_machines, release_ips, delete_volumes,
    delete_app]
