"""The fault suite: every migration here ends completed and verified, copying nothing twice beyond
the requests that failed or the parts in flight, and each test prints its figures (faults
injected, bytes re-sent, time to recover) and appends them to ``artifacts/faults.jsonl``.

- ``test_storage_faults``: 5xx, reset connections and stalls that hold the connection open, on 20%
  of object-data requests, in front of an S3 destination and then an S3 source: each copy ends
  within a bound relative to the same copy without faults.
- ``test_worker_kills``: the worker SIGKILLed at 5 random points of a weights + secrets migration.
- ``test_many_migrations``: 20 migrations at once on one worker.

Stopping and restarting the Temporal server mid-copy is
``tests/test_resume.py::test_a_restarted_temporal_server_does_not_lose_the_copy``.
"""
