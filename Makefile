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

# Every benchmark, each appending its table to docs/benchmarks.md (about an hour on 2 cores;
# needs debian-reference-en, debian-faq, postgresql-doc-15 and, for the last, chromium).
PY = $(abspath .venv/bin/python)
bench:
	cd bench && $(PY) cli_start.py --record
	cd bench && $(PY) embedding_backends.py --record
	cd bench && $(PY) ingest_compare.py --corpus debian-reference --record
	cd bench && $(PY) ingest_compare.py --corpus postgresql --record
	cd bench && $(PY) large_text.py --mb 200 --backend fake --record
	cd bench && $(PY) large_text.py --mb 20 --backend onnx --record
	cd bench && $(PY) retrieval_scale.py --record
	cd bench && $(PY) answer_latency.py --record
	cd bench && $(PY) ui_latency.py --record

# The Debian FAQ dev set and Chinook, through `kb eval` into a scratch home (needs debian-faq).
EVAL_HOME ?= /tmp/kb-eval-home
eval:
	.venv/bin/python ../shared/eval/build_faq_qa.py $(EVAL_HOME)/debfaq.jsonl /usr/share/doc/debian/FAQ/*.en.html
	.venv/bin/kb --home $(EVAL_HOME) ingest /usr/share/doc/debian/FAQ/*.en.html --kb faq
	.venv/bin/kb --home $(EVAL_HOME) eval retrieval $(EVAL_HOME)/debfaq.jsonl --kb faq --out $(EVAL_HOME)/retrieval
	.venv/bin/kb --home $(EVAL_HOME) eval answers $(EVAL_HOME)/debfaq.jsonl --kb faq --out $(EVAL_HOME)/answers
	.venv/bin/kb --home $(EVAL_HOME) eval sql ../shared/eval/chinook_questions.jsonl --database sqlite:///$(abspath ../shared/data/chinook.sqlite) --out $(EVAL_HOME)/sql
