"""The test suite's paths, commands and environment: test-only credentials and the worker policy."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
FLYAWAY = [sys.executable, "-m", "flyaway.starter.cli"]
TEMPORAL_CLI = str(REPO / ".venv" / "bin" / "temporal")
TEST_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing-access-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
#: the worker policy of the test suite: its servers listen on loopback, its secrets files lie in the temp
#: folder, and the tests name a few credential and secret variables of their own
TEST_POLICY_ENV = {
    "FLYAWAY_ALLOW_HOSTS": "127.0.0.1,localhost,::1",
    "FLYAWAY_ALLOW_DOTENV_DIRS": tempfile.gettempdir(),
    "FLYAWAY_ALLOW_SECRET_ENV": "APP_*,TEST_*,HF_TOKEN_COPY",
    "FLYAWAY_ALLOW_CREDENTIALS": ",".join([
        "probe=PROBE_TOKEN", "probe=METRICS_TOKEN", "cloudflare=CF_READ_ONLY_TOKEN", "temporal=TEMPORAL_CLOUD_KEY",
        "tigris=TIGRIS_KEY_ID", "tigris=TIGRIS_SECRET", "s3=READER_KEY_ID", "s3=READER_SECRET",
        "registry=TEST_SOURCE_PASSWORD", "registry=TEST_READER_PASSWORD", "registry=TEST_PUSHER_PASSWORD",
        "agent_env=MODEL_DIR", "agent_env=STORAGE_EMULATOR_HOST", "s3=UNSET_TEST_KEY", "hf=UNSET_TEST_HF_TOKEN", "modal=UNSET_TEST_MODAL_SECRET",
        "temporal=UNSET_TEST_TEMPORAL_KEY", "temporal=TEST_AGENT_TEMPORAL_KEY"]),
}
#: a RunPod S3 API key as the runpod_volume kind reads it by default (moto takes any)
TEST_RUNPOD_ENV = {"RUNPOD_S3_ACCESS_KEY": "user_testing", "RUNPOD_S3_SECRET_KEY": "rps_testing"}
