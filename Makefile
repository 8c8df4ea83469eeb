# Shortcuts; the scripts are the source of truth (README uses them directly).
.PHONY: setup app test lint bench eval

setup:
	scripts/setup --dev

app:
	scripts/app

test:
	scripts/test

lint:
	.venv/bin/python -m ruff check . && .venv/bin/python -m ruff format --check . && .venv/bin/python -m mypy .

bench:
	.venv/bin/python bench/ingest_compare.py --record

eval:
	.venv/bin/python ../shared/eval/build_faq_qa.py /tmp/debfaq.jsonl /usr/share/doc/debian/FAQ/*.en.html
	.venv/bin/python eval/faq_retrieval.py /tmp/debfaq.jsonl /tmp/debfaq-run.jsonl /usr/share/doc/debian/FAQ/*.en.html
