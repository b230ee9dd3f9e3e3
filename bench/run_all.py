"""Every flyaway benchmark in one run, one table; ``make bench`` runs this.

    .venv/bin/python bench/run_all.py [flags of bench/copy_bench.py, e.g. --only s3 --keep-data DIR]

Today the benchmarks are the copy benchmarks of ``bench/copy_bench.py`` (local -> S3 and local ->
local against rclone and cp, with flyaway's peak RSS, verification time and history events); a new
benchmark adds its rows to the same table. Numbers also land in ``bench/results/latest.json``.
"""

from __future__ import annotations

import copy_bench


def main() -> None:
    args = copy_bench.parser().parse_args()
    copy_bench.report(*copy_bench.run(args))


if __name__ == "__main__":
    main()
