"""Fly's hosts, played locally: a Machine the fake Fly API creates with a ``flyaway`` command runs
as a local process, with exactly the Machine's env (its config's, then what Fly adds at boot: the
app's secrets and ``FLY_*``), and its mounted volume is a local folder.

A volume's data is the folder ``root/<volume id>``; a fork's folder is a copy of its source's
(modification times kept), made when a Machine first mounts the fork, and the mount path is a
symlink to it. Destroying the Machine stops the process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx

from flyaway.providers.fly.agent import AGENT_SECRET_PREFIX
from flyaway.starter.dev import stop_process
from tests.fakes.fly_machines import FakeFlyMachinesAPI, FakeMachine
from tests.support.env import FLYAWAY, REPO


class LocalFlyHosts:
    def __init__(self, fake: FakeFlyMachinesAPI, root: Path) -> None:
        self.fake = fake
        self.root = root
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        fake.on_machine_created = self.start
        fake.on_machine_destroyed = self.stop

    def volume_dir(self, volume_id: str) -> Path:
        return self.root / "volumes" / volume_id

    def log_of(self, machine_id: str) -> str:
        path = self.root / f"{machine_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, machine: FakeMachine) -> None:
        init = machine.config.get("init") or {}
        command = [*(init.get("entrypoint") or []), *(init.get("cmd") or [])]
        if command[:1] != ["flyaway"]:
            return
        for mount in machine.config.get("mounts") or []:
            self._mount(machine.app, mount["volume"], Path(mount["path"]))
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), **machine.config.get("env", {}), **machine.boot_env}
        with (self.root / f"{machine.id}.log").open("ab") as log:
            self.processes[machine.id] = subprocess.Popen(
                [*FLYAWAY, *command[1:]], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True)

    def _materialize(self, app: str, volume_id: str) -> Path:
        """The volume's folder; a fork's (of a fork, too) is copied from its source's the first time."""
        volume = self.fake.apps[app].volumes[volume_id]
        data = self.volume_dir(volume_id)
        if not data.exists() and volume.source_volume_id:
            shutil.copytree(self._materialize(app, volume.source_volume_id), data, symlinks=True)
        return data

    def _mount(self, app: str, volume_id: str, path: Path) -> None:
        """Link ``path`` to the volume's folder. Machines on this one host share their mount paths: with
        several agents, the path leads to the last one's fork, a copy of the same bytes."""
        data = self._materialize(app, volume_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.symlink_to(data, target_is_directory=True)

    def stop(self, machine: FakeMachine) -> None:
        process = self.processes.get(machine.id)
        if process is not None:
            stop_process(process)

    def machine_as_the_api_returns_it(self, app: str, machine_id: str) -> str:
        """``GET /apps/{app}/machines/{id}``, what any holder of a read token for the app sees."""
        response = httpx.get(f"{self.fake.base_url}/apps/{app}/machines/{machine_id}",
                             headers={"Authorization": f"Bearer {self.fake.token}"}, timeout=10)
        response.raise_for_status()
        return response.text

    def agent_secrets(self, app: str) -> list[str]:
        """Names of the app secrets flyaway set for its agents and has not unset yet."""
        return [name for name in self.fake.apps[app].secrets if name.startswith(AGENT_SECRET_PREFIX)]

    def running(self) -> list[str]:
        return [machine_id for machine_id, process in self.processes.items() if process.poll() is None]

    def close(self) -> None:
        for process in self.processes.values():
            stop_process(process)
