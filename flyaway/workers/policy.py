"""The worker's policy at work: loaded and its credentials registered for redaction at start, checked
against every activity's input before the activity runs.

Checking activity inputs, rather than only the migration's plan check, covers every way a plan
part reaches a worker: a child workflow or an agent request started by hand from the UI as well.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from flyaway.codec import KEYS_ENV, parse_key_ring
from flyaway.policy import WorkerPolicy, load_policy
from flyaway.redaction import register_credential


def start_policy(environ: Mapping[str, str] = os.environ) -> WorkerPolicy:
    """Load the policy and register every credential value the worker holds, so logs never show one.

    Raises ``ValueError`` for a policy that cannot be read or a credential too short to be real.
    """
    policy = load_policy(environ)
    for name in sorted(policy.credential_names()):
        value = environ.get(name, "")
        if not value:
            continue
        if os.path.isabs(value) and os.path.isfile(value):
            _register_key_file(Path(value))
        elif name == KEYS_ENV:
            register_credential(name, value)
            for key_id, key in parse_key_ring(value).items():
                register_credential(f"{KEYS_ENV} key {key_id}", base64.b64encode(key).decode())
        else:
            register_credential(name, value)
    return policy


def _register_key_file(path: Path) -> None:
    """A variable naming a key file (GOOGLE_APPLICATION_CREDENTIALS): the file's secrets are the credential."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # not a key file; the activity that uses it says so
    if isinstance(content, dict):
        for field in ("private_key", "private_key_id", "client_secret", "refresh_token"):
            if isinstance(content.get(field), str) and content[field]:
                register_credential(f"{path}: {field}", content[field])


class PolicyInterceptor(Interceptor):
    """Refuses an activity whose input asks for a credential, address, variable or file the policy does not allow."""

    def __init__(self, policy: WorkerPolicy) -> None:
        self.policy = policy

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CheckInputs(next, self.policy)


class _CheckInputs(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, policy: WorkerPolicy) -> None:
        super().__init__(next)
        self.policy = policy

    def execute_activity(self, input: ExecuteActivityInput) -> Any:
        for arg in input.args:
            if isinstance(arg, BaseModel):
                self.policy.check(arg)
        return self.next.execute_activity(input)
