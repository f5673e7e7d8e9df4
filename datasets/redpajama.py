#!/usr/bin/env python3
"""RedPajama (the paper's second corpus, section 4.1: raw long documents whose questions the
policy model writes) → the engine's input layout, one {"context", "source"} per line.

Needs Hugging Face hub access and `pip install datasets` (not available on logo's CI
machines, which reach only package registries). Streams the 1T sample and keeps documents of
at least --min-words words, so that N chunks of chunk_size tokens exist.

Usage: python datasets/redpajama.py --count 2000 [--min-words 6000] [--out FILE]
Then: questions.enabled: true in the pipeline file.
"""
import argparse
import json
import os
from pathlib import Path


def main():
    cache = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache" / "logo"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--min-words", type=int, default=6000)
    ap.add_argument("--dataset", default="togethercomputer/RedPajama-Data-1T-Sample")
    ap.add_argument("--out", type=Path, default=cache / "data" / "redpajama.jsonl")
    args = ap.parse_args()
    from datasets import load_dataset  # imported here: only this recipe needs it

    stream = load_dataset(args.dataset, split="train", streaming=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp, kept = args.out.with_suffix(".tmp"), 0
    with open(tmp, "w") as out:
        for i, rec in enumerate(stream):
            if len(rec["text"].split()) < args.min_words:
                continue
            out.write(json.dumps({"context": rec["text"], "source": f"redpajama:{i}"}) + "\n")
            kept += 1
            if kept == args.count:
                break
    os.replace(tmp, args.out)
    print(f"{args.out}: {kept} documents")


if __name__ == "__main__":
    main()
