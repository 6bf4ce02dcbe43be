# The two entry points of the README. Both set up the machine first (idempotent).
.PHONY: setup demo demo-v2 test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/tagtune demo --out tagtune-demo

demo-v2: setup
	.venv/bin/tagtune demo --model-family v2 --out tagtune-demo-v2

test: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/python -m pytest -q
