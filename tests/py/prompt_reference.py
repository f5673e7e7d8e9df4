#!/usr/bin/env python3
"""transformers' side of tests/tests/prompt_families.rs: the ids of each LOGO prompt and which
part of the user message each token belongs to, computed independently of logo.

Usage: prompt_reference.py SPEC.json > OUT.json

SPEC: {"folder": tokenizer folder, "gguf": optional GGUF file name inside it (then the
       tokenizer is loaded with gguf_file=), "samples": [{"messages": [{role, content}],
       "parts": [str]}]}; the user message (the last message) ends with the parts concatenated
       or is exactly them.
OUT:  {"samples": [{"ids": [id], "bounds": [int]}]}
"ids" is `apply_chat_template(messages, tokenize=True, add_generation_prompt=True)`; "bounds"
[len(parts) + 1]: the index of the first token whose first character is at or after the
start of each part in the rendered text (then the end of the last part); the parts are found
in the rendered text where a marker message starts, as the template left them (surrounding
whitespace of the message may be trimmed).
"""
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import AutoTokenizer  # noqa: E402


def bounds_of(tok, messages, rendered, ids, parts):
    """Token index where each part starts, by the tokens' character offsets. The message starts
    where a marker put in its place starts; the template may have trimmed its whitespace."""
    content = messages[-1]["content"]
    marked = [dict(m) for m in messages]
    marked[-1]["content"] = "\uf8f0MARK\uf8f1"
    at = tok.apply_chat_template(marked, tokenize=False, add_generation_prompt=True).index("\uf8f0")
    if rendered[at:].startswith(content):
        lead, kept = 0, len(content)
    else:
        core = content.strip()
        assert rendered[at:].startswith(core), "the template changed the message"
        lead, kept = len(content) - len(content.lstrip()), len(core)
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids, "rendered text re-encodes differently"
    starts = [o[0] for o in enc["offset_mapping"]]
    # The parts sit at the end of the message (after a folded system message, if any).
    base = len(content) - sum(len(p) for p in parts)
    cuts, c = [], base
    for p in parts + [""]:
        cuts.append(at + min(max(c - lead, 0), kept))
        c += len(p)
    return [next((i for i, s in enumerate(starts) if s >= b), len(ids)) for b in cuts]


def main():
    spec = json.load(open(sys.argv[1]))
    kw = {"gguf_file": spec["gguf"]} if spec.get("gguf") else {}
    tok = AutoTokenizer.from_pretrained(spec["folder"], **kw)
    out = []
    for s in spec["samples"]:
        ids = tok.apply_chat_template(s["messages"], tokenize=True, add_generation_prompt=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)
        rendered = tok.apply_chat_template(s["messages"], tokenize=False, add_generation_prompt=True)
        out.append({"ids": ids, "bounds": bounds_of(tok, s["messages"], rendered, ids, s["parts"])})
    json.dump({"samples": out}, sys.stdout)


main()
