#!/usr/bin/env python3
"""long-llm-data (Zhang et al. 2024b; the paper's first corpus, section 4.1: long contexts with
GPT-4 questions and answers) → the engine's input layout {"context", "question", "answer"}.

Needs Hugging Face hub access and `pip install datasets`. The GPT-4 QA files hold chat
conversations whose first user turn is the long context followed by the question; the recipe
splits the context from the question at the last blank line of that turn and takes the
assistant turn as the reference answer. Records of any other shape are counted and skipped.

Usage: python datasets/long_llm_data.py --count 4000 [--config gpt/one_detail_book.train.64K]
"""
import argparse
import json
import os
from pathlib import Path


def split_turn(text):
    head, sep, tail = text.rstrip().rpartition("\n\n")
    return (head, tail) if sep and head.strip() and tail.strip() else (None, None)


def main():
    cache = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache" / "logo"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--dataset", default="namespace-Pt/long-llm-data")
    ap.add_argument("--config", default=None, help="subset / data_files pattern")
    ap.add_argument("--out", type=Path, default=cache / "data" / "long_llm_data.jsonl")
    args = ap.parse_args()
    from datasets import load_dataset

    kwargs = {"data_files": args.config} if args.config else {}
    stream = load_dataset(args.dataset, split="train", streaming=True, **kwargs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp, kept, skipped = args.out.with_suffix(".tmp"), 0, 0
    with open(tmp, "w") as out:
        for i, rec in enumerate(stream):
            turns = rec.get("conversations") or []
            user = next((t["content"] for t in turns if t.get("role") == "user"), None)
            answer = next((t["content"] for t in turns if t.get("role") == "assistant"), None)
            context, question = split_turn(user) if user else (None, None)
            if not (context and question and answer):
                skipped += 1
                continue
            out.write(json.dumps({"context": context, "question": question, "answer": answer,
                                  "source": f"long-llm-data:{i}"}) + "\n")
            kept += 1
            if kept == args.count:
                break
    os.replace(tmp, args.out)
    print(f"{args.out}: {kept} documents ({skipped} records of another shape skipped)")


if __name__ == "__main__":
    main()
