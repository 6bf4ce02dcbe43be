# The two entry points of the README. Both set up the machine first (idempotent).
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/tagtune demo --out tagtune-demo

test: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/python -m pytest -q
