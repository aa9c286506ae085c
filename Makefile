# Shortcuts for the commands of the README.

.PHONY: test serve

# The exact test command of the README (and of .ci/run).
test:
	python3 -m venv .venv && .venv/bin/pip install -q -c .ci/constraints.txt -e '.[test]' && .venv/bin/python -m pytest -q -n 2 --dist loadgroup

.venv/bin/maxq: setup.cfg pyproject.toml
	python3 -m venv .venv && .venv/bin/pip install -q -e .
	touch $@

# Settings come from MAXQ_* variables, e.g. MAXQ_FLOWS_ROOT=examples make serve
serve: .venv/bin/maxq
	.venv/bin/maxq serve
