"""``gcp-storage-emulator`` for the benchmarks, speaking one more piece of GCS's protocol.

rclone's Go client asks Cloud Storage, with the request header ``X-Guploader-No-308: yes``, to
answer an unfinished resumable chunk with 200 and ``X-Http-Status-Code-Override: 308`` instead
of a bare 308, and fails on a bare 308. Cloud Storage honours the header; the emulator does not.
This launcher runs the emulator with that one answer translated, so rclone and flyaway write to
the same server; requests without the header (flyaway's Python client) are served unchanged.

    python bench/gcs_emulator.py --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

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


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, required=True)
    args = cli.parse_args()
    # resumable chunks arrive by PUT or, from the Go client, by POST with the upload id; the server
    # module binds the handlers when it is imported, so it is imported after they are wrapped
    objects.insert = honour_no_308(objects.insert)
    objects.upload_partial = honour_no_308(objects.upload_partial)
    from gcp_storage_emulator import server
    server.create_server(args.host, args.port, in_memory=True).run()


if __name__ == "__main__":
    main()
