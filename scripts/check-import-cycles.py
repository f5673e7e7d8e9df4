#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle.

Usage: scripts/check-import-cycles.py [SRC_DIR ...]   (default: every crate's src/ here)

Each `*.rs` file under SRC_DIR is a module (`a/mod.rs` and `a.rs` are `a`; `lib.rs` and
`main.rs` the crate root; `bin/` is skipped). Outside `#[cfg(test)]` items, comments and
literals, a module
depends on another when it names it: `crate::a::b::Item` (the longest path that is a module),
`super::` (its parent), or `child::` / `self::child::` for a `mod child;` it declares.

A module and its own submodules are one unit, as Rust's privacy makes them (children see
their parent's private items): an edge between `a::b::c` and `a::d` counts as `a::b → a::d`
(the two children of their common ancestor that hold them), and an edge between a module and
one of its ancestors or descendants does not count. A circle among what is left (Tarjan's
strongly connected components) is printed with the imports that make it, and the exit status
is 1; 0 when there is none.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRATES = ["policy/src", "engine/src", "trainer/src", "eval/src", "schemas/src", "formats/src", "env/src", "tests/src", "datasets/src"]

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def modules(src):
    """Module path (tuple of names) → file, for every .rs file under src."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[0] == "bin":
                continue
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods[tuple(rel)] = path
    return mods


def strip(text):
    """Rust source with comments removed and string and char literals emptied."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and not re.match(r"[A-Za-z0-9_]", text[i - 1 : i]):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(?:\\.[^']*|[^\\'])'", text[i:]):
            m = re.match(r"'(?:\\.[^']*|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def code(path):
    """The file's code outside `#[cfg(test)]` items, without comments and literals."""
    text = strip(open(path, encoding="utf-8").read())
    while True:
        at = text.find("#[cfg(test)]")
        if at < 0:
            return text
        # Drop the item after the attribute: up to its `;` or its matching `}`.
        i, depth = at + len("#[cfg(test)]"), 0
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    i += 1
                    break
            elif text[i] == ";" and depth == 0:
                i += 1
                break
            i += 1
        text = text[:at] + text[i:]


def unit_edge(a, b):
    """(a', b'): the children of a and b's common ancestor holding them, or None when one is
    an ancestor of the other."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == len(a) or n == len(b):
        return None
    return a[: n + 1], b[: n + 1]


def edges(mods):
    """(from unit, to unit) → the module-level imports behind it."""
    out = {}

    def add(a, b, why):
        e = unit_edge(a, b)
        if e:
            out.setdefault(e, []).append(("::".join(a) or "crate", "::".join(b) or "crate", why))

    for m, path in mods.items():
        text = code(path)
        for hit in re.finditer(rf"\bcrate::((?:{IDENT}::)*)(\{{[^}}]*\}}|{IDENT})", text):
            base = [p for p in hit.group(1).split("::") if p]
            tail = hit.group(2)
            paths = []
            if tail.startswith("{"):
                for item in tail[1:-1].split(","):
                    parts = [p for p in item.strip().split("::") if p and p != "self"]
                    paths.append(base + parts)
                paths.append(base)
            else:
                paths.append(base + [tail])
            for p in paths:
                for k in range(len(p), 0, -1):
                    if tuple(p[:k]) in mods:
                        add(m, tuple(p[:k]), hit.group(0))
                        break
        kids = set(re.findall(rf"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+({IDENT})\s*;", text))
        for hit in re.finditer(rf"(?<![A-Za-z0-9_:])(?:self::)?({IDENT})::", text):
            if hit.group(1) in kids and m + (hit.group(1),) in mods:
                add(m, m + (hit.group(1),), hit.group(0))
        if m and re.search(r"(?<![A-Za-z0-9_:])super::", text) and m[:-1] in mods:
            add(m, m[:-1], "super::")
    return out


def circles(units):
    """Strongly connected components with more than one unit (Tarjan, iterative)."""
    graph = {}
    for a, b in units:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def check(src):
    """Prints each circle of the crate at src; returns how many there are."""
    mods = modules(src)
    es = edges(mods)
    found = circles(es)
    for comp in found:
        names = ", ".join("::".join(c) for c in comp)
        print(f"{src}: import circle among {names}:")
        inside = set(comp)
        for (a, b), whys in sorted(es.items()):
            if a in inside and b in inside:
                for frm, to, why in sorted(set(whys)):
                    print(f"  {frm} -> {to}  ({' '.join(why.split())})")
    return len(found)


def main(argv):
    srcs = argv or [os.path.join(ROOT, c) for c in CRATES if os.path.isdir(os.path.join(ROOT, c))]
    total = sum(check(s) for s in srcs)
    if total:
        print(f"{total} import circle(s)")
        return 1
    print(f"no import circles in {len(srcs)} crate(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
