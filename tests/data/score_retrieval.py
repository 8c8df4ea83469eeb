#!/usr/bin/env python3
"""Score retrieval runs against a QA set built by build_faq_qa.py.

Usage: score_retrieval.py QA.jsonl RUN.jsonl
RUN.jsonl has one line per question: {"id": ..., "retrieved": ["chunk text", ...]} in rank order.
A retrieved chunk counts as a hit when at least half of its token 4-grams occur in the gold
section, or it holds at least half of the gold section's 4-grams (short sections). A token is a
run of letters/digits, except that each Chinese/Japanese ideograph is a token of its own (so
Chinese text, written without spaces, is scored by character 4-grams; text without CJK scores
exactly as word 4-grams). Prints recall@1, recall@5, MRR@10 and the number of questions as JSON.
"""

import json
import re
import sys

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{CJK}]|[^\W{CJK}]+", re.UNICODE)


def grams(text, n=4):
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def is_hit(chunk, gold):
    c = grams(chunk)
    if not c or not gold:
        return False
    shared = len(c & gold)
    return shared / len(c) >= 0.5 or shared / len(gold) >= 0.5


def score(qa_path, run_path):
    gold = {}
    for line in open(qa_path, encoding="utf-8"):
        r = json.loads(line)
        gold[r["id"]] = grams(r["gold_text"])
    runs = {}
    for line in open(run_path, encoding="utf-8"):
        r = json.loads(line)
        runs[r["id"]] = r["retrieved"]
    r1 = r5 = mrr = 0.0
    for qid, g in gold.items():
        ranks = [i for i, chunk in enumerate(runs.get(qid, [])[:10]) if is_hit(chunk, g)]
        if ranks:
            r1 += ranks[0] == 0
            r5 += ranks[0] < 5
            mrr += 1.0 / (ranks[0] + 1)
    n = len(gold)
    return {
        "recall@1": round(r1 / n, 4),
        "recall@5": round(r5 / n, 4),
        "mrr@10": round(mrr / n, 4),
        "questions": n,
    }


if __name__ == "__main__":
    print(json.dumps(score(sys.argv[1], sys.argv[2])))
