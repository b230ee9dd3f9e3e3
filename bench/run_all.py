"""Every flyaway benchmark in one run, one table; ``make bench`` runs this.

    .venv/bin/python bench/run_all.py [flags of bench/copy_bench.py, e.g. --only s3 --keep-data DIR]

The benchmarks are the copy benchmarks of ``bench/copy_bench.py``: local -> S3, Tigris -> RunPod
volume (moto -> moto), local -> GCS (emulator), local -> local and 10,000 tiny files to S3, each
against rclone (and cp on local disk), with flyaway's peak RSS, verification time and history
events per GiB and per 1,000 files. A new benchmark adds its rows to the same table. Numbers also
land in ``bench/results/latest.json``.
"""

from __future__ import annotations

import copy_bench


def main() -> None:
    args = copy_bench.parser().parse_args()
    copy_bench.report(*copy_bench.run(args))


if __name__ == "__main__":
    main()
