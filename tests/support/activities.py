"""Activities run in-process as flyaway's worker runs them: their exceptions leave through the one failure path."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.testing import ActivityEnvironment

from flyaway.failures import activity_failures


class WorkerActivityEnvironment(ActivityEnvironment):
    """An ``ActivityEnvironment`` whose activities fail the way :class:`flyaway.failures.FailureInterceptor`
    makes them fail on a worker (the SDK's environment runs no interceptor)."""

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with activity_failures():
            result = super().run(fn, *args, **kwargs)
        return _mapped(result) if inspect.isawaitable(result) else result


async def _mapped(result: Awaitable[Any]) -> Any:
    with activity_failures():
        return await result
