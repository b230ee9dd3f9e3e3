# The two commands of the README: `make demo` and `make test`.
.PHONY: demo test test-quick lint bench

demo:  ## set up what is missing, then run the dev server, a worker and the demo migration
	bash scripts/setup.sh demo
	.venv/bin/flyaway dev --demo

test: lint  ## set up what is missing, lint, then run the whole test suite (slow end-to-end tests included)
	.venv/bin/pytest

test-quick:  ## the suite without the slow end-to-end tests
	bash scripts/setup.sh test
	.venv/bin/pytest -m "not slow"

lint:  ## ruff over the tree, mypy --strict over flyaway/ (both configured in pyproject.toml)
	bash scripts/setup.sh test
	.venv/bin/ruff check; ruff=$$?; .venv/bin/mypy && exit $$ruff  # both report, either fails it

bench:  ## copy benchmarks against rclone and cp; prints throughput ratios and peak RSS
	bash scripts/setup.sh bench
	.venv/bin/python bench/run_all.py
