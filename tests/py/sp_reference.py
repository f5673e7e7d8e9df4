#!/usr/bin/env python3
"""transformers' side of tests/tests/sentencepiece.rs: ids of the SentencePiece GGUF fixtures
(scripts/make-sp-fixtures.py) and of the Hugging Face folders transformers saves from them.

Usage: sp_reference.py SPEC.json > OUT.json

SPEC: {"gguf_dir", "ggufs": [names], "texts": [str], "leval": [jsonl paths], "leval_per_file",
       "exported": {gguf name: folder written by logo's export_hf_tokenizer},
       "save_dir", "templates": {"default": src, "rag": src}, "chats": [[messages]]}
OUT:  {"leval_texts": [str],
       "gguf": {name: {"plain": [[id]], "bos": [[id]], "decoded": [str], "chat": [[id]]}},
       "exported": {name: {"plain": [[id]], "bos": [[id]]}},
       "saved": {folder: {"files": [str], "default": [[id]], "rag": [[id]]}}}
"plain" is `encode(text, add_special_tokens=False, split_special_tokens=True)` (control strings
stay text, as logo encodes documents), "bos" `encode(text, split_special_tokens=True)` (BOS added by `add_bos_token`), "decoded" `decode` of
"plain", "chat" `apply_chat_template(messages, tokenize=True, add_generation_prompt=True)`.
Texts are `texts` then `leval_texts` (the `input` of the first `leval_per_file` documents of
each L-Eval file, read with `strict=False`: some hold raw control characters).
"""
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import AutoTokenizer  # noqa: E402


def ids_of(x):
    if hasattr(x, "keys"):
        x = x["input_ids"]
    return [int(i) for i in x]


def encode_all(tok, texts):
    plain = [tok.encode(t, add_special_tokens=False, split_special_tokens=True) for t in texts]
    bos = [tok.encode(t, split_special_tokens=True) for t in texts]
    return plain, bos


def chats(tok, messages, name=None):
    kw = {} if name is None else {"chat_template": name}
    return [ids_of(tok.apply_chat_template(m, tokenize=True, add_generation_prompt=True, **kw)) for m in messages]


def main():
    spec = json.load(open(sys.argv[1]))
    leval = []
    for path in spec["leval"]:
        with open(path, encoding="utf-8") as f:
            for line in f.readlines()[: spec["leval_per_file"]]:
                leval.append(json.loads(line, strict=False)["input"])
    texts = spec["texts"] + leval
    out = {"leval_texts": leval, "gguf": {}, "exported": {}, "saved": {}}
    for name in spec["ggufs"]:
        tok = AutoTokenizer.from_pretrained(spec["gguf_dir"], gguf_file=name)
        plain, bos = encode_all(tok, texts)
        decoded = [tok.decode(p, clean_up_tokenization_spaces=False) for p in plain]
        chat = chats(tok, spec["chats"]) if tok.chat_template is not None else []
        out["gguf"][name] = {"plain": plain, "bos": bos, "decoded": decoded, "chat": chat}
    for name, folder in spec["exported"].items():
        tok = AutoTokenizer.from_pretrained(folder)
        plain, bos = encode_all(tok, texts)
        out["exported"][name] = {"plain": plain, "bos": bos}
    # Folders as transformers 5 saves them: one template (chat_template.jinja), named templates
    # (chat_template.jinja + additional_chat_templates/rag.jinja), and the legacy list in
    # tokenizer_config.json (save_jinja_files=False).
    base = AutoTokenizer.from_pretrained(spec["gguf_dir"], gguf_file=spec["ggufs"][0])
    templates = spec["templates"]
    for folder, template, jinja in [
        ("single", templates["default"], True),
        ("named", dict(templates), True),
        ("legacy", dict(templates), False),
    ]:
        base.chat_template = template
        path = os.path.join(spec["save_dir"], folder)
        base.save_pretrained(path, save_jinja_files=jinja)
        tok = AutoTokenizer.from_pretrained(path)
        files = sorted(
            os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
        )
        entry = {"files": files, "default": chats(tok, spec["chats"])}
        if isinstance(template, dict):
            entry["rag"] = chats(tok, spec["chats"], "rag")
        out["saved"][folder] = entry
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
