#!/usr/bin/env python3
"""Where a committed result came from: the command, the git commit and the machine.

Every JSON under bench/results/ carries these keys at its top level (a folder of results
carries them in its provenance.json); tests/tests/bench_provenance.rs checks that they are
there. One implementation for every writer: the Python and shell benchmarks import
`provenance()`, the Rust benchmarks (engine/benches/) run this file and read its stdout.

    {"command": "bench/shared_prompt.sh 2048 1",        # as typed, from the repository root
     "git_commit": "<40 hex>", "git_dirty": false,      # tracked files outside bench/results changed
     "date": "2026-12-03T08:00:00Z",                    # UTC, when the result was written
     "machine": {"cpu": "...", "cpus": 2, "memory_gib": 23.4, "avx512f": true,
                 "os": "Linux-6.1-x86_64-with-glibc2.36", "load_average": [1.0, 0.9, 0.8]}}

Usage as a program: `python3 bench/provenance.py COMMAND...` prints that object as JSON, with
its arguments joined by spaces as the command (pass it as one quoted string).
"""

import datetime
import os
import platform
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu():
    """(model name, whether the CPU has AVX-512F): libtorch picks its kernels by the latter."""
    model, avx512 = "?", False
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                avx512 = "avx512f" in line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    return model, avx512


def machine():
    """The machine facts a measurement depends on (CPU, cores, memory, OS, load)."""
    model, avx512 = _cpu()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cpus": os.cpu_count(), "memory_gib": round(memory, 1),
            "avx512f": avx512, "os": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def provenance(command):
    """The provenance keys for a result produced by `command` (a list of words or a string)."""
    if not isinstance(command, str):
        command = shlex.join(command)
    command = command.strip()
    # Results written earlier in the same `just results` run do not make the code dirty.
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return {
        "command": command,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
    }


def stamp(report, command):
    """`report` with the provenance keys first (a dict; returns a new dict)."""
    return {**provenance(command), **report}


if __name__ == "__main__":
    import json

    if len(sys.argv) < 2:
        sys.exit("usage: bench/provenance.py COMMAND...")
    print(json.dumps(provenance(" ".join(sys.argv[1:]))))
