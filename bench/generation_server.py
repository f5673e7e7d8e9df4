#!/usr/bin/env python3
"""Main-job throughput: in process (candle) vs llama.cpp's llama-server at 1, 2 and 4
requests in flight, same documents and seed, in one run; plus llama-server's own prefill and
decode tokens/s on the same prompts (its /metrics counters).

Writes bench/results/generation_server.json with the command, git commit and machine facts.
Usage: bench/generation_server.py [--limit 8] [--parallel 1,2,4] [--threads 2]
Needs: the release logo-engine ($CARGO_TARGET_DIR or $LOGO_CACHE/target), llama-server
(scripts/build-llama-server.sh) and the embedded model and essays (scripts/just setup).
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from provenance import stamp  # noqa: E402
CACHE = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache/logo"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
ENGINE = TARGET / "release/logo-engine"
SERVER = CACHE / "llama.cpp/bin/llama-server"
MODEL = CACHE / "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def metrics(port):
    """llama-server's Prometheus counters as {name: value}."""
    out = {}
    for line in get(f"http://127.0.0.1:{port}/metrics").splitlines():
        m = re.match(r"^(llamacpp:[a-z_]+)\s+([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def run_engine(yaml, out_dir, limit):
    start = time.monotonic()
    p = subprocess.run(
        [str(ENGINE), "run", str(yaml), "--limit", str(limit), "--output", str(out_dir), "--quiet"],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - start
    if p.returncode not in (0, 1):
        sys.exit(f"logo-engine failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    manifest = json.loads((out_dir / "manifest.json").read_text())
    samples = sum(f["rows"] for f in manifest["files"])
    return {
        "wall_seconds": round(wall, 2),
        "samples": samples,
        "samples_per_hour": round(samples * 3600 / wall, 1),
        "questions": manifest["stats"]["rows_out"].get("source", 0),
        "generated_tokens": manifest["stats"]["tokens"].get("generator", 0)
        + manifest["stats"]["tokens"].get("questions", 0),
        "skipped": manifest["stats"]["skipped"],
        "events": manifest["stats"].get("events", {}),
        "summary": p.stdout.strip().splitlines(),
    }


def pipeline(base_text, extra_generator):
    """pipeline.yaml with `extra_generator` lines added under `generator:`."""
    return base_text.replace("generator:\n", "generator:\n" + extra_generator, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--parallel", default="1,2,4")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for p in (ENGINE, SERVER, MODEL):
        if not p.exists():
            sys.exit(f"missing {p}")
    base = (ROOT / "pipeline.yaml").read_text()
    tmp = Path(tempfile.mkdtemp(prefix="logo-bench-"))
    runs = []

    yaml = tmp / "in_process.yaml"
    yaml.write_text(base)
    r = run_engine(yaml, tmp / "out-in-process", args.limit)
    r.update(backend="in_process", requests_in_flight=1)
    runs.append(r)
    print(json.dumps({k: r[k] for k in ("backend", "samples", "wall_seconds", "samples_per_hour")}))

    for n in [int(x) for x in args.parallel.split(",")]:
        port = free_port()
        log = open(tmp / f"server-{n}.log", "w")
        server = subprocess.Popen(
            [str(SERVER), "-m", str(MODEL), "--alias", "smollm2", "--host", "127.0.0.1",
             "--port", str(port), "--parallel", str(n), "-c", str(4096 * n),
             "--threads", str(args.threads), "--metrics"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(600):
                try:
                    if json.loads(get(f"http://127.0.0.1:{port}/health")).get("status") == "ok":
                        break
                except Exception:
                    time.sleep(0.1)
            yaml = tmp / f"server-{n}.yaml"
            yaml.write_text(pipeline(base, (
                "  backend: openai\n"
                "  openai:\n"
                f"    endpoints: [\"http://127.0.0.1:{port}\"]\n"
                "    model: smollm2\n"
                f"    max_in_flight: {n}\n")))
            r = run_engine(yaml, tmp / f"out-server-{n}", args.limit)
            m = metrics(port)
            r.update(
                backend="openai (llama-server)",
                requests_in_flight=n,
                server_parallel=n,
                server_threads=args.threads,
                server_prompt_tokens=m.get("llamacpp:prompt_tokens_total"),
                server_prompt_seconds=m.get("llamacpp:prompt_seconds_total"),
                server_predicted_tokens=m.get("llamacpp:tokens_predicted_total"),
                server_predicted_seconds=m.get("llamacpp:tokens_predicted_seconds_total"),
            )
            if r["server_prompt_seconds"]:
                r["server_prefill_tokens_per_second"] = round(
                    r["server_prompt_tokens"] / r["server_prompt_seconds"], 1)
            if r["server_predicted_seconds"]:
                r["server_decode_tokens_per_second"] = round(
                    r["server_predicted_tokens"] / r["server_predicted_seconds"], 1)
            runs.append(r)
            print(json.dumps({k: r.get(k) for k in (
                "backend", "requests_in_flight", "samples", "wall_seconds", "samples_per_hour",
                "server_prefill_tokens_per_second", "server_decode_tokens_per_second")}))
        finally:
            server.terminate()
            server.wait()
            log.close()

    result = stamp({
        "what": "main job (pipeline.yaml, embedded essays, questions generated) samples per "
                "hour: in-process candle policy vs llama-server serving the same GGUF",
        "limit_documents": args.limit,
        "llama_server": str(SERVER),
        "note": "the in-process run holds the GGUF dequantised to f32 (model.weights: f32); "
                "llama-server runs the Q4_1 weights as stored, so responses (and skips) differ; "
                "server_*_tokens_per_second are llama-server's own /metrics counters over the run",
        "runs": runs,
    }, ["bench/generation_server.py"] + sys.argv[1:])
    out = ROOT / "bench/results/generation_server.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
