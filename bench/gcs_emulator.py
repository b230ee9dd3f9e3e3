"""``gcp-storage-emulator`` speaking two more pieces of Cloud Storage's protocol, for the benchmarks
and the tests.

- rclone's Go client asks Cloud Storage, with the request header ``X-Guploader-No-308: yes``, to
  answer an unfinished resumable chunk with 200 and ``X-Http-Status-Code-Override: 308`` instead
  of a bare 308, and fails on a bare 308. Cloud Storage honours the header; the emulator does not.
  Requests without the header (flyaway's Python client) are served unchanged.
- A compose with ``ifGenerationMatch`` makes the object only if it is at that generation (0: only
  if absent), else answers 412, as Cloud Storage does; the emulator ignores the precondition. Two
  pieces of one split file that complete at once rely on it to make one object, not two
  generations of it. The emulator serves one request at a time, so the check and the compose are
  one step.

    python bench/gcs_emulator.py --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

RESUME_INCOMPLETE = 308


def honour_no_308(upload_partial: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(upload_partial)
    def handler(request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        result = upload_partial(request, response, *args, **kwargs)
        if request.get_header("X-Guploader-No-308", "") == "yes" and int(response.status) == RESUME_INCOMPLETE:
            response.status = HTTPStatus.OK
            response["X-Http-Status-Code-Override"] = str(RESUME_INCOMPLETE)
        return result

    return handler


def honour_generation_match(compose: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(compose)
    def handler(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = request.query.get("ifGenerationMatch")
        if wanted:
            try:
                current = int(storage.get_file_obj(request.params["bucket_name"],
                                                   request.params["object_id"])["generation"])
            except NotFound:
                current = 0
            if current != int(wanted[0]):
                message = f"At least one of the pre-conditions you specified did not hold (generation {current})."
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": HTTPStatus.PRECONDITION_FAILED, "message": message,
                                         "errors": [{"reason": "conditionNotMet", "message": message}]}})
                return None
        return compose(request, response, storage, *args, **kwargs)

    return handler


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, required=True)
    args = cli.parse_args()
    # resumable chunks arrive by PUT or, from the Go client, by POST with the upload id; the server
    # module binds the handlers when it is imported, so it is imported after they are wrapped
    objects.insert = honour_no_308(objects.insert)
    objects.upload_partial = honour_no_308(objects.upload_partial)
    objects.compose = honour_generation_match(objects.compose)
    from gcp_storage_emulator import server
    server.create_server(args.host, args.port, in_memory=True).run()


if __name__ == "__main__":
    main()
