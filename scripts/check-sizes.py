#!/usr/bin/env python3
"""Fails when a library function is over 80 lines or a file over 600, without its reason.

Usage: scripts/check-sizes.py [SRC_DIR ...]   (default: every crate's src/ here)

Counts rustfmt-formatted code under each SRC_DIR, skipping `tests.rs` files and a file's
trailing `#[cfg(test)] mod tests` (test code is not library code):
- a function runs from its `fn` line to the `}` at the same indentation (its signature
  included); a declaration without a body (`fn f();`, extern items) is not counted;
- a file is its lines before its test module.
A function over 80 lines passes when its doc comment says why (a `///` line above it holding
"over 80 lines"); a file over 600 lines when its module doc (`//!`) holds "over 600 lines".
Prints every long item (with "reason given" or "NO REASON") and exits 1 when one has none.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRATES = ["policy/src", "engine/src", "trainer/src", "eval/src", "schemas/src", "formats/src", "env/src",
          "tests/src", "datasets/src"]
MAX_FN, MAX_FILE = 80, 600
FN = re.compile(r"^(\s*)(pub(\([^)]*\))? )?(const )?(async )?(unsafe )?(extern \"C\" )?fn (\w+)")


def library_lines(lines):
    """The lines before the file's test module."""
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]") and i + 1 < len(lines) \
                and re.match(r"mod tests\b", lines[i + 1]):
            return lines[:i]
    return lines


def doc_above(lines, i):
    """The `///` doc lines (and attributes) directly above line i."""
    doc = []
    j = i - 1
    while j >= 0 and lines[j].strip().startswith(("///", "#[")):
        doc.append(lines[j])
        j -= 1
    return "\n".join(doc)


def functions(lines):
    """(name, first line index, length) of every function with a body."""
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        indent = m.group(1)
        # The signature ends at the first line ending with `{` (a body) or `;` (none).
        j = i
        while j < len(lines) and not lines[j].rstrip().endswith(("{", ";")):
            j += 1
        if j == len(lines) or lines[j].rstrip().endswith(";"):
            continue
        if lines[j].rstrip().endswith("}"):  # one-line body `fn f() { x }`
            continue
        end = j + 1
        while end < len(lines) and lines[end] != indent + "}":
            end += 1
        out.append((m.group(8), i, end - i + 1))
    return out


def check(src_dirs):
    long_items, missing = [], 0
    for src in src_dirs:
        for root, _, files in os.walk(src):
            for f in sorted(files):
                if not f.endswith(".rs") or f == "tests.rs":
                    continue
                path = os.path.join(root, f)
                rel = os.path.relpath(path, ROOT) if path.startswith(ROOT) else path
                with open(path, encoding="utf-8") as fh:
                    lines = library_lines(fh.read().splitlines())
                module_doc = "\n".join(l for l in lines if l.startswith("//!"))
                if len(lines) > MAX_FILE:
                    ok = "over 600 lines" in module_doc
                    long_items.append((len(lines), f"file {rel}", ok))
                for name, i, n in functions(lines):
                    if n > MAX_FN:
                        ok = "over 80 lines" in doc_above(lines, i)
                        long_items.append((n, f"fn {rel}:{i + 1} {name}", ok))
    for n, what, ok in sorted(long_items, reverse=True):
        print(f"{n:5} lines  {what}  ({'reason given' if ok else 'NO REASON'})")
        missing += not ok
    fns = sum(1 for _, w, _ in long_items if w.startswith("fn "))
    print(f"{fns} function(s) over {MAX_FN} lines, {len(long_items) - fns} file(s) over "
          f"{MAX_FILE} lines, {missing} without a reason")
    return 1 if missing else 0


if __name__ == "__main__":
    dirs = sys.argv[1:] or [os.path.join(ROOT, c) for c in CRATES if os.path.isdir(os.path.join(ROOT, c))]
    sys.exit(check(dirs))
