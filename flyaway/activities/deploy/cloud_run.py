"""Cloud Run (Admin API v2, ``google-cloud-run`` over its REST transport): one service with a GPU.

The service is written whole from the plan: the image, env (plain values and Secret Manager
references pinned to the version the secrets stage wrote), the weights bucket mounted
read-only as a Cloud Storage volume, a startup probe on the health path, GPU, CPU, memory and
scaling. A label carries a digest of that spec: a re-run finding the same digest on a ready
service changes nothing; otherwise the service is created or replaced and the long-running
operation is followed until Cloud Run has the new revision serving (its startup probe passed).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable
from typing import TypeVar

import structlog
from google.api_core import exceptions as google_errors
from google.api_core.client_options import ClientOptions
from google.api_core.operation import Operation
from google.cloud import run_v2

from flyaway.activities.deploy.base import DEPLOYERS, Applied, plain_env
from flyaway.activities.deploy.health import HealthProbe, poll_until
from flyaway.errors import InvalidPlan
from flyaway.models.deploy import CloudRunDeploy, DeployOutcome, WeightsVolume
from flyaway.providers import google

T = TypeVar("T")
log = structlog.get_logger(__name__)

SPEC_LABEL = "flyaway-spec"
MANAGED_LABELS = {"managed-by": "flyaway"}
CONTAINER_NAME = "server"
WEIGHTS_VOLUME = "weights"
CLOUD_RUN_ROLES = "roles/run.admin and roles/iam.serviceAccountUser"
#: Cloud Run's longest probe period
MAX_PROBE_PERIOD_SECONDS = 240


def secret_source(reference: str) -> run_v2.EnvVarSource:
    """``projects/P/secrets/S/versions/N`` (what the secrets stage reports) -> a secret key reference."""
    secret, marker, version = reference.rpartition("/versions/")
    if not marker or not secret.startswith("projects/") or not version:
        raise InvalidPlan(f"'{reference}' is not a Secret Manager version (projects/P/secrets/S/versions/N)")
    return run_v2.EnvVarSource(secret_key_ref=run_v2.SecretKeySelector(secret=secret, version=version))


def spec_digest(service: run_v2.Service) -> str:
    """Short digest of a service spec, fit for a label value."""
    return hashlib.sha256(run_v2.Service.to_json(service, sort_keys=True, indent=None).encode()).hexdigest()[:16]


@DEPLOYERS.register("cloud_run")
class CloudRunDeployer:
    def __init__(self, stage: CloudRunDeploy, image: str, secrets: dict[str, str],
                 weights: WeightsVolume | None) -> None:
        self.stage, self.image, self.secrets, self.weights = stage, image, secrets, weights
        credentials, _ = google.load_credentials(stage.credentials_env, f"Cloud Run in project {stage.project}",
                                                 anonymous=stage.api_endpoint is not None)
        options = ClientOptions(api_endpoint=stage.api_endpoint) if stage.api_endpoint else None
        self._client = run_v2.ServicesClient(credentials=credentials, transport="rest", client_options=options)

    # -- the spec -----------------------------------------------------------------------------

    def desired(self) -> run_v2.Service:
        """The service as the plan wants it (without its name, which only updates carry)."""
        stage = self.stage
        env = [run_v2.EnvVar(name=name, value=value) for name, value in
               sorted(plain_env(stage, self.secrets, self.weights, stage.weights_mount_path).items())]
        env += [run_v2.EnvVar(name=name, value_source=secret_source(reference))
                for name, reference in sorted(self.secrets.items())]
        limits = {"cpu": stage.cpu, "memory": stage.memory}
        if stage.gpu:
            limits["nvidia.com/gpu"] = "1"
        volumes, mounts = [], []
        if self.weights is not None:
            volumes = [run_v2.Volume(name=WEIGHTS_VOLUME,
                                     gcs=run_v2.GCSVolumeSource(bucket=self.weights.name, read_only=True))]
            mounts = [run_v2.VolumeMount(name=WEIGHTS_VOLUME, mount_path=stage.weights_mount_path)]
        container = run_v2.Container(
            name=CONTAINER_NAME, image=self.image, args=stage.cmd or [], env=env, volume_mounts=mounts,
            ports=[run_v2.ContainerPort(name="http1", container_port=stage.port)],
            # GPU instances need CPU always allocated
            resources=run_v2.ResourceRequirements(limits=limits, cpu_idle=not stage.gpu, startup_cpu_boost=True),
            startup_probe=self._startup_probe())
        template = run_v2.RevisionTemplate(
            containers=[container], volumes=volumes,
            scaling=run_v2.RevisionScaling(min_instance_count=stage.min_instances,
                                           max_instance_count=stage.max_instances),
            execution_environment=run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2,
            max_instance_request_concurrency=stage.concurrency or 0,
            service_account=stage.service_account or "")
        if stage.gpu:
            template.node_selector = run_v2.NodeSelector(accelerator=stage.gpu)
            template.gpu_zonal_redundancy_disabled = not stage.gpu_zonal_redundancy
        service = run_v2.Service(template=template, invoker_iam_disabled=stage.public,
                                 ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL, labels=MANAGED_LABELS)
        service.labels[SPEC_LABEL] = spec_digest(service)
        return service

    def _startup_probe(self) -> run_v2.Probe:
        """The health path, probed every ``health.interval`` until ``health.deadline``."""
        health = self.stage.health
        period = min(MAX_PROBE_PERIOD_SECONDS, max(1, round(health.interval.total_seconds())))
        return run_v2.Probe(http_get=run_v2.HTTPGetAction(path=health.path, port=self.stage.port),
                            period_seconds=period, timeout_seconds=min(period, 10),
                            failure_threshold=max(1, math.ceil(health.deadline.total_seconds() / period)))

    # -- applying it ----------------------------------------------------------------------------

    async def apply(self) -> Applied:
        desired = self.desired()
        existing = await asyncio.to_thread(self._get)
        if existing is not None and self._unchanged(existing, desired):
            service, outcome = existing, DeployOutcome.unchanged
        else:
            operation = await asyncio.to_thread(self._write, desired, existing is not None)
            service = await self._finish(operation)
            outcome = DeployOutcome.updated if existing is not None else DeployOutcome.created
        if not service.uri:
            raise InvalidPlan(f"Cloud Run service {self.stage.service_name} has no URL (default_uri_disabled?)")
        probe = HealthProbe(service.uri + self.stage.health.path) if self.stage.public else None
        log.info("Cloud Run service applied", service=service.name, outcome=outcome.value, uri=service.uri)
        return Applied(service=service.name, endpoint_url=service.uri, outcome=outcome, probe=probe)

    async def check(self) -> None:
        """Credentials and rights, by reading the service (missing is fine)."""
        await asyncio.to_thread(self._get)

    @staticmethod
    def _unchanged(existing: run_v2.Service, desired: run_v2.Service) -> bool:
        """Same spec digest, and its latest revision is the one serving (an earlier rollout finished)."""
        return (existing.labels.get(SPEC_LABEL) == desired.labels[SPEC_LABEL] and not existing.reconciling
                and bool(existing.latest_ready_revision)
                and existing.latest_ready_revision == existing.latest_created_revision)

    def _get(self) -> run_v2.Service | None:
        try:
            return self._call("read the service", lambda: self._client.get_service(name=self.stage.service_name),
                              expected=(google_errors.NotFound,))
        except google_errors.NotFound:
            return None

    def _write(self, desired: run_v2.Service, exists: bool) -> Operation:
        stage = self.stage

        def update() -> Operation:
            return self._client.update_service(service=run_v2.Service(desired, name=stage.service_name))

        if exists:
            return self._call("update the service", update)
        parent = stage.service_name.rpartition("/services/")[0]
        try:
            return self._call("create the service",
                              lambda: self._client.create_service(parent=parent, service=desired,
                                                                  service_id=stage.service),
                              expected=(google_errors.Conflict,))
        except google_errors.Conflict:  # an earlier attempt created it after all
            return self._call("update the service", update)

    async def _finish(self, operation: Operation) -> run_v2.Service:
        """Follow the rollout until Cloud Run reports it done, then its outcome."""
        async def rolled_out() -> str | None:
            done = await asyncio.to_thread(self._call, "follow the rollout", operation.done)
            return None if done else "rolling out"

        await poll_until(rolled_out, self.stage.health, f"Cloud Run rollout of {self.stage.service_name}")
        try:
            service: run_v2.Service = operation.result()
            return service
        except google_errors.GoogleAPICallError as error:
            raise InvalidPlan(f"Cloud Run could not roll out {self.stage.service_name}: {error.message}; check "
                              f"the image, cmd, port and the startup probe on {self.stage.health.path}") from None

    def _call(self, what: str, fn: Callable[[], T], expected: tuple[type[Exception], ...] = ()) -> T:
        """One API call, retried while transient; refusals become flyaway's errors."""
        return google.call(fn, f"Cloud Run service {self.stage.service_name}: {what}", roles=CLOUD_RUN_ROLES,
                           not_found="not found (does the project exist, with the Cloud Run API enabled?)",
                           expected=expected)

    async def aclose(self) -> None:
        self._client.transport.close()
