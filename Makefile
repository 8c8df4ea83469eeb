# Shortcuts; the scripts are the source of truth (README uses them directly).
.PHONY: setup app test lint bench eval

setup:
	scripts/setup --dev

app:
	scripts/app

test:
	scripts/test

lint:
	.venv/bin/python -m ruff check . && .venv/bin/python -m ruff format --check . && .venv/bin/python -m mypy

# Every benchmark, each appending its table to docs/benchmarks.md (about an hour on 2 cores;
# needs debian-reference-en, debian-faq, postgresql-doc-15 and, for the last, chromium).
PY = $(abspath .venv/bin/python)
bench:
	$(PY) -m bench.cli_start --record
	$(PY) -m bench.embedding_backends --record
	$(PY) -m bench.ingest_compare --corpus debian-reference --record
	$(PY) -m bench.ingest_compare --corpus postgresql --record
	$(PY) -m bench.large_text --mb 200 --backend fake --record
	$(PY) -m bench.large_text --mb 20 --backend onnx --record
	$(PY) -m bench.retrieval_scale --record
	$(PY) -m bench.answer_latency --record
	$(PY) -m bench.ui_latency --record

# The Debian FAQ dev set and Chinook, through `kb eval` into a scratch home (needs debian-faq).
EVAL_HOME ?= /tmp/kb-eval-home
eval:
	.venv/bin/python ../shared/eval/build_faq_qa.py $(EVAL_HOME)/debfaq.jsonl /usr/share/doc/debian/FAQ/*.en.html
	.venv/bin/kb --home $(EVAL_HOME) ingest /usr/share/doc/debian/FAQ/*.en.html --kb faq
	.venv/bin/kb --home $(EVAL_HOME) eval retrieval $(EVAL_HOME)/debfaq.jsonl --kb faq --out $(EVAL_HOME)/retrieval
	.venv/bin/kb --home $(EVAL_HOME) eval answers $(EVAL_HOME)/debfaq.jsonl --kb faq --out $(EVAL_HOME)/answers
	.venv/bin/kb --home $(EVAL_HOME) eval sql ../shared/eval/chinook_questions.jsonl --database sqlite:///$(abspath ../shared/data/chinook.sqlite) --out $(EVAL_HOME)/sql
