#!/usr/bin/env python3
"""L-Eval (../shared/data/leval, github.com/OpenLMLab/LEval) → the engine's input layout.

Each line: {"context", "questions", "answers", "source"}. The engine also reads the L-Eval
files as they are (`input`/`instructions`/`outputs`); this recipe selects tasks and documents
and drops the summarisation and multiple-choice files unless asked.

Usage: python datasets/leval.py [--src ../shared/data/leval] [--out $LOGO_CACHE/data/leval.jsonl]
       [--tasks natural_question,multidoc_qa,...]
"""
import argparse
import json
import os
from pathlib import Path

QA_TASKS = ["natural_question", "legal_contract_qa", "multidoc_qa", "scientific_qa"]


def main():
    here = Path(__file__).resolve().parent
    cache = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache" / "logo"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=here.parent.parent / "shared" / "data" / "leval")
    ap.add_argument("--out", type=Path, default=cache / "data" / "leval.jsonl")
    ap.add_argument("--tasks", default=",".join(QA_TASKS))
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    docs = questions = 0
    with open(tmp, "w") as out:
        for task in args.tasks.split(","):
            path = args.src / f"{task}.jsonl"
            for n, line in enumerate(open(path, encoding="utf-8"), 1):
                if not line.strip():
                    continue
                rec = json.loads(line, strict=False)  # some lines hold raw control characters
                qs, ans = rec.get("instructions") or [], rec.get("outputs") or []
                if len(qs) != len(ans):
                    print(f"{path}: row {n}: {len(qs)} questions, {len(ans)} answers: skipped")
                    continue
                out.write(json.dumps({"context": rec["input"], "questions": qs, "answers": ans,
                                      "source": f"leval/{task}:{n}"}) + "\n")
                docs, questions = docs + 1, questions + len(qs)
    os.replace(tmp, args.out)
    print(f"{args.out}: {docs} documents, {questions} questions")


if __name__ == "__main__":
    main()
