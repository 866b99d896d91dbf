.PHONY: style quality test test-slow

check_dirs := dexml_hf tests benchmarks

style:
	ruff format $(check_dirs)
	ruff check --fix $(check_dirs)

quality:
	ruff check $(check_dirs)

test:
	python -m pytest

test-slow:
	python -m pytest -m slow
