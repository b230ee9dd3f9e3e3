"""fly.toml -> a target platform's deploy settings, and a plain list of what has no equivalent.

``flyaway translate fly.toml --to cloud_run|runpod|modal`` prints the result; the deploy stage
applies the same translation when the plan names a fly.toml, under the plan's own settings.

Read from the fly.toml (fly.io/docs/reference/configuration): ``app``, ``[env]``,
``[processes]`` (the process serving HTTP becomes the command), ``[http_service]`` or the
HTTP one of ``[[services]]`` (internal port, auto stop/start, ``min_machines_running``,
concurrency, HTTP checks), top-level ``[checks]``, ``[[mounts]]`` (where the weights are
expected) and ``[[vm]]`` (size preset, cpus, memory, ``gpu_kind``, ``gpus``). Every other key
is listed as having no equivalent, with what to do about it where there is something to do.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TypeVar

from flyaway.errors import InvalidPlan, NotFound
from flyaway.models.deploy import (
    RUNPOD_VOLUME_PATH,
    CloudRunDeploy,
    ModalDeploy,
    Platform,
    RunpodDeploy,
    Translation,
)
from flyaway.models.image import DEFAULT_DROP_ENV

T = TypeVar("T")


@dataclass(frozen=True)
class FlyGpu:
    memory_gb: int
    runpod_pools: tuple[str, ...]
    modal: str


#: Fly's GPU kinds (``vm.gpu_kind``) and their nearest equivalents
FLY_GPUS = {
    "a10": FlyGpu(24, ("AMPERE_24",), "A10"),
    "l40s": FlyGpu(48, ("ADA_48_PRO",), "L40S"),
    "a100-pcie-40gb": FlyGpu(40, ("AMPERE_80",), "A100-40GB"),
    "a100-sxm4-80gb": FlyGpu(80, ("AMPERE_80",), "A100-80GB"),
}
#: Fly's GPU size presets: (gpu kind, cpus, memory MB)
GPU_SIZES = {"a10": ("a10", 8, 32768), "l40s": ("l40s", 8, 32768), "a100-40gb": ("a100-pcie-40gb", 8, 32768),
             "a100-80gb": ("a100-sxm4-80gb", 8, 32768)}
#: memory per CPU of Fly's CPU size presets (``shared-cpu-2x``, ``performance-8x``), MB
CPU_SIZE_MEMORY = {"shared-cpu": 256, "performance": 2048}
CLOUD_RUN_GPU = "nvidia-l4"
CLOUD_RUN_GPU_MEMORY_GB = 24
CLOUD_RUN_MAX_CPUS, CLOUD_RUN_MAX_MEMORY_MB = 8, 32 * 1024
_CPU_SIZE = re.compile(r"^(shared-cpu|performance)-([0-9]+)x$")
_MEMORY = re.compile(r"^\s*([0-9]+)\s*(gb|mb|gib|mib)?\s*$", re.IGNORECASE)

#: top-level keys translated or deliberately ignored; anything else is reported
_HANDLED = {"app", "env", "processes", "http_service", "services", "checks", "mounts", "vm"}
_NO_EQUIVALENT = {
    "primary_region": "choose the target's region in the deploy section",
    "build": "the image is copied as Fly built it (image stage); nothing is rebuilt",
    "deploy": "release_command and the deploy strategy do not move; run a release command yourself",
    "statics": "serve static files from the image or a bucket",
    "metrics": "point your monitoring at the new service",
    "restart": "the platform restarts failed containers itself",
    "kill_signal": "the platform sends SIGTERM",
    "kill_timeout": "the platform's shutdown grace period applies",
    "swap_size_mb": "no swap on the target",
    "console_command": "no console command on the target",
    "files": "bake the files into the image",
    "experimental": "experimental Fly settings do not move",
}


@dataclass
class FlyService:
    """The parts of a fly.toml that describe the service, in Fly's terms."""

    app: str | None = None
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] | None = None
    mount_path: str | None = None
    has_vm: bool = False
    gpu_kind: str | None = None
    gpus: int = 0
    cpus: int | None = None
    memory_mb: int | None = None
    health_path: str | None = None
    auto_stop: str = "off"
    min_running: int = 0
    soft_limit: int | None = None
    hard_limit: int | None = None
    #: settings with no equivalent on any target
    unsupported: list[str] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------------

def _expect(value: Any, kind: type[T], where: str) -> T:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidPlan(f"fly.toml: {where} should be a {kind.__name__}, not {value!r}")
    return value


def _tables(value: Any, where: str) -> list[dict[str, Any]]:
    """``[x]`` and ``[[x]]`` alike: a list of tables."""
    tables = [value] if isinstance(value, dict) else value
    for table in _expect(tables, list, where):
        _expect(table, dict, where)
    return tables


def _memory_mb(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _MEMORY.match(_expect(value, str, where))
    if not match:
        raise InvalidPlan(f"fly.toml: {where} = {value!r} is not a memory size like 2gb or 512mb")
    return int(match.group(1)) * (1024 if (match.group(2) or "mb").lower() in ("gb", "gib") else 1)


def _auto_stop(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "stop" if value else "off"
    if value not in ("off", "stop", "suspend"):
        raise InvalidPlan(f"fly.toml: {where} = {value!r} is not true, false, 'off', 'stop' or 'suspend'")
    return str(value)


def parse_fly_toml(text: str) -> FlyService:
    """The service a fly.toml describes; ``InvalidPlan`` for TOML errors and wrong types, naming the key."""
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidPlan(f"fly.toml does not parse: {error}") from None
    service = FlyService(app=config.get("app"))
    service.env = _without_fly_env({str(k): str(v) for k, v in _expect(config.get("env", {}), dict, "[env]").items()},
                                   service)
    process = _read_processes(config, service)
    _read_http(config, service)
    _read_checks(config, service)
    _read_mounts(config, service)
    _read_vm(config, service, process)
    for key in config:
        if key not in _HANDLED:
            reason = _NO_EQUIVALENT.get(key, "not translated")
            service.unsupported.append(f"{key}: {reason}")
    return service


def _without_fly_env(env: dict[str, str], service: FlyService) -> dict[str, str]:
    """``env`` less what only makes sense on Fly (the image stage's default ``drop_env``), listed as left behind."""
    dropped = [name for name in env if any(fnmatchcase(name, pattern) for pattern in DEFAULT_DROP_ENV)]
    if dropped:
        service.unsupported.append(f"[env] {', '.join(dropped)}: Fly-only variables, dropped as the image stage "
                                   f"drops them; add any you still need to deploy.env")
    return {name: value for name, value in env.items() if name not in dropped}


def read_fly_toml(path: str) -> FlyService:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise NotFound(f"fly.toml {path} does not exist on the worker") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidPlan(f"fly.toml {path} cannot be read: {error}") from None
    return parse_fly_toml(text)


def _http_processes(config: dict[str, Any]) -> list[str]:
    http_service = config.get("http_service")
    return list(http_service.get("processes", [])) if isinstance(http_service, dict) else []


def _read_processes(config: dict[str, Any], service: FlyService) -> str | None:
    """The command of the process serving HTTP; the other processes are reported. Returns its name."""
    processes = _expect(config.get("processes", {}), dict, "[processes]")
    if not processes:
        return None
    wanted = _http_processes(config)
    name = next((p for p in wanted if p in processes), "app" if "app" in processes else next(iter(processes)))
    try:
        service.cmd = shlex.split(_expect(processes[name], str, f"processes.{name}"))
    except ValueError as error:
        raise InvalidPlan(f"fly.toml: processes.{name} is not a command line: {error}") from None
    for other in processes:
        if other != name:
            service.unsupported.append(f"processes.{other}: only the process serving HTTP ({name}) moves; run "
                                       f"'{other}' as its own service")
    return name


def _read_concurrency(table: dict[str, Any], where: str, service: FlyService) -> None:
    concurrency = _expect(table.get("concurrency", {}), dict, f"{where}.concurrency")
    if "soft_limit" in concurrency:
        service.soft_limit = _expect(concurrency["soft_limit"], int, f"{where}.concurrency.soft_limit")
    if "hard_limit" in concurrency:
        service.hard_limit = _expect(concurrency["hard_limit"], int, f"{where}.concurrency.hard_limit")


def _read_scaling(table: dict[str, Any], where: str, service: FlyService) -> None:
    if "auto_stop_machines" in table:
        service.auto_stop = _auto_stop(table["auto_stop_machines"], f"{where}.auto_stop_machines")
    service.min_running = _expect(table.get("min_machines_running", 0), int, f"{where}.min_machines_running")
    if table.get("auto_start_machines") is False:
        service.unsupported.append(f"{where}.auto_start_machines = false: the target starts instances on demand "
                                   f"whenever it scales to zero")


def _first_path(checks: list[dict[str, Any]], where: str) -> str | None:
    for check in checks:
        if check.get("type", "http") == "http" and check.get("path"):
            return _expect(check["path"], str, f"{where}.path")
    return None


def _is_http(service_table: dict[str, Any]) -> bool:
    return any("http" in port.get("handlers", []) for port in _tables(service_table.get("ports", []), "ports"))


def _read_http(config: dict[str, Any], service: FlyService) -> None:
    services = _tables(config.get("services", []), "[[services]]")
    if "http_service" in config:
        table, where = _expect(config["http_service"], dict, "[http_service]"), "http_service"
        checks = _tables(table.get("checks", []), "http_service.checks")
        extra = services
    elif services:
        table = next((s for s in services if _is_http(s)), services[0])
        where = "services"
        checks = _tables(table.get("http_checks", []), "services.http_checks")
        extra = [s for s in services if s is not table]
        if table.get("tcp_checks"):
            service.unsupported.append("services.tcp_checks: only HTTP checks carry over (as the health check)")
    else:
        return
    if "internal_port" in table:
        service.port = _expect(table["internal_port"], int, f"{where}.internal_port")
    _read_scaling(table, where, service)
    _read_concurrency(table, where, service)
    service.health_path = _first_path(checks, f"{where}.checks")
    for other in extra:
        service.unsupported.append(f"services (internal_port {other.get('internal_port')}, "
                                   f"{other.get('protocol', 'tcp')}): one HTTP port per service; expose it "
                                   f"another way")


def _read_checks(config: dict[str, Any], service: FlyService) -> None:
    checks = _expect(config.get("checks", {}), dict, "[checks]")
    if service.health_path is None:
        service.health_path = _first_path([_expect(c, dict, f"checks.{n}") for n, c in checks.items()], "checks")


def _read_mounts(config: dict[str, Any], service: FlyService) -> None:
    mounts = _tables(config.get("mounts", []), "[[mounts]]")
    if mounts:
        service.mount_path = _expect(mounts[0].get("destination"), str, "mounts.destination")
    for extra in mounts[1:]:
        service.unsupported.append(f"mounts (source {extra.get('source')!r} at {extra.get('destination')}): one "
                                   f"volume, the weights', is mounted")


def _read_vm(config: dict[str, Any], service: FlyService, process: str | None) -> None:
    vms = _tables(config.get("vm", []), "[[vm]]")
    matching = [vm for vm in vms if not vm.get("processes") or process in vm.get("processes", [])]
    if not matching:
        return
    vm = matching[0]
    service.has_vm = True
    size = _expect(vm.get("size", "shared-cpu-1x"), str, "vm.size")
    if size in GPU_SIZES:
        service.gpu_kind, service.cpus, service.memory_mb = GPU_SIZES[size]
        service.gpus = 1
    elif match := _CPU_SIZE.match(size):
        service.cpus = int(match.group(2))
        service.memory_mb = service.cpus * CPU_SIZE_MEMORY[match.group(1)]
    else:
        service.unsupported.append(f"vm.size = {size!r}: unknown size preset; set cpu and memory yourself")
    if "cpus" in vm:
        service.cpus = _expect(vm["cpus"], int, "vm.cpus")
    for key in ("memory", "memory_mb"):
        if key in vm:
            service.memory_mb = _memory_mb(vm[key], f"vm.{key}")
    if "gpu_kind" in vm:
        service.gpu_kind = _expect(vm["gpu_kind"], str, "vm.gpu_kind")
        service.gpus = max(service.gpus, 1)
    if "gpus" in vm:
        service.gpus = _expect(vm["gpus"], int, "vm.gpus")
    if service.gpu_kind is not None and service.gpu_kind not in FLY_GPUS:
        service.unsupported.append(f"vm.gpu_kind = {service.gpu_kind!r}: unknown GPU kind; set the GPU yourself")
        service.gpu_kind = None
    for vm_extra in vms:
        if vm_extra is not vm:
            service.unsupported.append(f"vm for processes {vm_extra.get('processes')}: only the HTTP process's "
                                       f"machine size moves")


# --- translating -------------------------------------------------------------------------------

def _min_instances(service: FlyService, unsupported: list[str]) -> int:
    if service.auto_stop == "off":
        unsupported.append("auto_stop_machines off: Machines never stop; the machine count is not in fly.toml, "
                           "so one instance is kept running: raise it to your `fly scale count`")
        return max(service.min_running, 1)
    if service.auto_stop == "suspend":
        unsupported.append("auto_stop_machines = suspend: the target stops idle instances instead (a cold start, "
                           "not a resume)")
    return service.min_running


def _gib_or_mib(memory_mb: int) -> str:
    return f"{memory_mb // 1024}Gi" if memory_mb % 1024 == 0 else f"{memory_mb}Mi"


def _common(service: FlyService, name_field: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if service.app:
        settings[name_field] = service.app
    if service.port is not None:
        settings["port"] = service.port
    if service.env:
        settings["env"] = service.env
    if service.cmd:
        settings["cmd"] = service.cmd
    if service.health_path:
        settings["health"] = {"path": service.health_path}
    return settings


def _with_concurrency_and_mount(service: FlyService, settings: dict[str, Any]) -> dict[str, Any]:
    """Cloud Run and Modal both cap requests per instance and mount the weights where fly.toml did."""
    if service.hard_limit is not None:
        settings["concurrency"] = service.hard_limit
    if service.mount_path:
        settings["weights_mount_path"] = service.mount_path
    return settings


def _cloud_run(service: FlyService, unsupported: list[str]) -> dict[str, Any]:
    settings = _common(service, "service")
    if service.has_vm:
        settings["gpu"] = CLOUD_RUN_GPU if service.gpu_kind else None
        cpus, memory_mb = service.cpus or 1, service.memory_mb or 256
        if service.gpu_kind:
            gpu = FLY_GPUS[service.gpu_kind]
            if gpu.memory_gb > CLOUD_RUN_GPU_MEMORY_GB:
                unsupported.append(f"vm.gpu_kind = {service.gpu_kind!r} ({gpu.memory_gb} GB): Cloud Run's "
                                   f"{CLOUD_RUN_GPU} has {CLOUD_RUN_GPU_MEMORY_GB} GB; check the model fits, or "
                                   f"set a larger gpu where your region offers one")
            if service.gpus > 1:
                unsupported.append(f"vm.gpus = {service.gpus}: Cloud Run attaches one GPU per instance")
            if cpus < 4 or memory_mb < 16384:
                unsupported.append(f"vm cpus {cpus}, memory {memory_mb} MB: raised to Cloud Run's GPU minimum "
                                   f"(4 CPUs, 16 GiB)")
                cpus, memory_mb = max(cpus, 4), max(memory_mb, 16384)
        if cpus > CLOUD_RUN_MAX_CPUS or memory_mb > CLOUD_RUN_MAX_MEMORY_MB:
            unsupported.append(f"vm cpus {cpus}, memory {memory_mb} MB: lowered to Cloud Run's largest instance "
                               f"({CLOUD_RUN_MAX_CPUS} CPUs, {CLOUD_RUN_MAX_MEMORY_MB // 1024} GiB)")
            cpus, memory_mb = min(cpus, CLOUD_RUN_MAX_CPUS), min(memory_mb, CLOUD_RUN_MAX_MEMORY_MB)
        settings["cpu"] = str(cpus)
        settings["memory"] = _gib_or_mib(memory_mb)
    settings["min_instances"] = _min_instances(service, unsupported)
    return _with_concurrency_and_mount(service, settings)


def _runpod(service: FlyService, unsupported: list[str]) -> dict[str, Any]:
    settings = _common(service, "endpoint_name")
    if service.gpu_kind:
        settings["gpu_pools"] = list(FLY_GPUS[service.gpu_kind].runpod_pools)
        settings["gpu_count"] = service.gpus
    if service.has_vm and (service.cpus or service.memory_mb):
        unsupported.append("vm cpus and memory: RunPod sizes CPU and memory with the GPU")
    settings["workers_min"] = _min_instances(service, unsupported)
    if service.soft_limit is not None:
        settings["requests_per_worker"] = service.soft_limit
    if service.hard_limit is not None:
        unsupported.append(f"concurrency.hard_limit = {service.hard_limit}: RunPod has no per-worker request cap; "
                           f"requests_per_worker (from soft_limit) sets when another worker starts")
    if service.mount_path and service.mount_path != RUNPOD_VOLUME_PATH:
        unsupported.append(f"mounts.destination = {service.mount_path!r}: RunPod mounts the network volume at "
                           f"{RUNPOD_VOLUME_PATH}; set weights_path_env so the server finds the weights")
    return settings


def _modal(service: FlyService, unsupported: list[str]) -> dict[str, Any]:
    settings = _common(service, "app_name")
    if service.cmd:
        unsupported.append("processes: Modal runs cmd as the whole command, without the image's ENTRYPOINT; "
                           "check it starts the server")
    if service.gpu_kind:
        gpu = FLY_GPUS[service.gpu_kind].modal
        settings["gpu"] = f"{gpu}:{service.gpus}" if service.gpus > 1 else gpu
    if service.has_vm:
        if service.cpus:
            settings["cpu"] = float(service.cpus)
        if service.memory_mb:
            settings["memory"] = service.memory_mb
    settings["min_containers"] = _min_instances(service, unsupported)
    return _with_concurrency_and_mount(service, settings)


_TRANSLATORS = {"cloud_run": _cloud_run, "runpod": _runpod, "modal": _modal}
_MODELS: dict[Platform, type[CloudRunDeploy | RunpodDeploy | ModalDeploy]] = {
    "cloud_run": CloudRunDeploy, "runpod": RunpodDeploy, "modal": ModalDeploy}


def translate(service: FlyService, platform: Platform) -> Translation:
    """The deploy fields for ``platform`` and everything that has no equivalent there."""
    unsupported = list(service.unsupported)
    settings = _TRANSLATORS[platform](service, unsupported)
    return Translation(platform=platform, settings=settings, unsupported=unsupported)


def missing_fields(translation: Translation) -> list[str]:
    """Required fields of the platform's section that the fly.toml cannot give (project, region, ...)."""
    model = _MODELS[translation.platform]
    return [name for name, info in model.model_fields.items()
            if info.is_required() and name != "platform" and name not in translation.settings]


def apply_translation(stage: CloudRunDeploy | RunpodDeploy | ModalDeploy, explicit: Collection[str],
                      translation: Translation) -> CloudRunDeploy | RunpodDeploy | ModalDeploy:
    """``stage`` with the fly.toml's settings where the plan sets nothing; env is merged, the plan's
    variables winning."""
    data = stage.model_dump()
    for key, value in translation.settings.items():
        if key == "env":
            data["env"] = {**value, **stage.env}
        elif key not in explicit:
            data[key] = value
    try:
        return type(stage).model_validate(data)
    except ValueError as error:
        raise InvalidPlan(f"deploy with the settings of {stage.fly_toml}: {error}; set the field in the plan to "
                          f"override the fly.toml") from None
