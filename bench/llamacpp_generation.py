"""llama.cpp reference numbers for `engine/benches/generation.rs`.

Measures, on the same GGUF and the same prompt token ids as the Rust bench, the prefill speed
(tokens/s reading the prompt in one `llama_decode`) and the decode speed (tokens/s generating
`--decode-tokens` tokens one at a time, greedy, stop tokens ignored) of llama.cpp on the CPU.

llama-cpp-python ships only a source distribution on PyPI (building llama.cpp from source takes
well over 5 minutes on a 2-core machine), so this script uses llama.cpp's C API through the
prebuilt manylinux wheel of `llama-cpp-cffi` (its CPU build, `llama/_llama_cpp_cpu*.so`),
loaded directly so that the package's heavy Python dependencies (transformers, huggingface-hub)
are not needed (on systems older than GCC 14's libstdc++ a one-function shim is compiled with
`cc` and loaded first, see `load_cxa_shim`). Setup:

    python3 -m venv /tmp/lcp && /tmp/lcp/bin/pip install cffi \
        && /tmp/lcp/bin/pip install --no-deps llama-cpp-cffi
    LOGO_BENCH_PYTHON=/tmp/lcp/bin/python cargo bench -p logo-engine --bench generation

Usage (normally invoked by the Rust bench):

    python llamacpp_generation.py --model M.gguf --prompt-ids ids.json \
        [--decode-tokens 64] [--threads 1] [--iters 3]

Prints one JSON object: backend, version, threads, prompt_tokens, decode_tokens and, per
iteration, prefill/decode seconds and tokens/s.
"""

import argparse
import glob
import importlib.metadata
import importlib.util
import json
import os
import sys
import time


def load_llama_cpp():
    """The cffi module of llama-cpp-cffi's CPU build, without importing the `llama` package."""
    spec = importlib.util.find_spec("llama")
    if spec is None or spec.origin is None:
        raise SystemExit("llama-cpp-cffi is not installed in this python")
    found = glob.glob(os.path.join(os.path.dirname(spec.origin), "_llama_cpp_cpu*.so"))
    if not found:
        raise SystemExit("llama-cpp-cffi has no CPU build (_llama_cpp_cpu*.so)")
    ext = importlib.util.spec_from_file_location("_llama_cpp_cpu", found[0])
    try:
        module = importlib.util.module_from_spec(ext)
    except ImportError as e:
        if "__cxa_call_terminate" not in str(e):
            raise
        # The wheel was built with GCC 14, whose code calls libstdc++'s __cxa_call_terminate
        # (GLIBCXX_3.4.33); older systems (Debian 12: GCC 12) lack it. It only calls
        # std::terminate, so a two-line shim loaded with RTLD_GLOBAL provides it.
        load_cxa_shim()
        module = importlib.util.module_from_spec(ext)
    ext.loader.exec_module(module)
    return module.lib, module.ffi


def load_cxa_shim():
    """Builds (with `cc`) and loads globally a library defining `__cxa_call_terminate`."""
    import ctypes
    import subprocess
    import tempfile

    tmp = tempfile.mkdtemp(prefix="logo-cxa-shim-")
    src, lib = os.path.join(tmp, "shim.c"), os.path.join(tmp, "shim.so")
    with open(src, "w") as f:
        f.write(
            "void _ZSt9terminatev(void) __attribute__((noreturn));\n"
            "void __cxa_call_terminate(void *e) { (void)e; _ZSt9terminatev(); }\n"
        )
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src, "-lstdc++"], check=True)
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-ids", required=True, help="JSON file: a list of token ids")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()

    with open(args.prompt_ids) as f:
        prompt = [int(t) for t in json.load(f)]
    lib, ffi = load_llama_cpp()

    @ffi.callback("void(enum ggml_log_level, const char *, void *)")
    def quiet(level, text, user_data):  # llama.cpp logs to stderr otherwise
        return None

    lib.llama_log_set(quiet, ffi.NULL)
    lib.llama_backend_init()
    mparams = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(args.model.encode(), mparams)
    if model == ffi.NULL:
        raise SystemExit(f"llama.cpp could not load {args.model}")
    cparams = lib.llama_context_default_params()
    n_ctx = len(prompt) + args.decode_tokens + 16
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_ctx
    cparams.n_ubatch = max(512, len(prompt))
    cparams.n_threads = args.threads
    cparams.n_threads_batch = args.threads
    ctx = lib.llama_init_from_model(model, cparams)
    if ctx == ffi.NULL:
        raise SystemExit("llama.cpp could not create a context")
    sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_greedy())

    prompt_buf = ffi.new("llama_token[]", prompt)
    one = ffi.new("llama_token[1]")
    iterations = []
    for _ in range(args.iters + 1):  # the first is a warm-up
        lib.llama_kv_self_clear(ctx)
        t0 = time.perf_counter()
        if lib.llama_decode(ctx, lib.llama_batch_get_one(prompt_buf, len(prompt))) != 0:
            raise SystemExit("llama_decode failed on the prompt")
        token = lib.llama_sampler_sample(sampler, ctx, -1)
        t1 = time.perf_counter()
        for _ in range(args.decode_tokens - 1):
            one[0] = token
            if lib.llama_decode(ctx, lib.llama_batch_get_one(one, 1)) != 0:
                raise SystemExit("llama_decode failed while decoding")
            token = lib.llama_sampler_sample(sampler, ctx, -1)
        t2 = time.perf_counter()
        iterations.append(
            {
                "prefill_seconds": t1 - t0,
                "decode_seconds": t2 - t1,
                "prefill_tokens_per_s": len(prompt) / (t1 - t0),
                "decode_tokens_per_s": (args.decode_tokens - 1) / (t2 - t1),
            }
        )
    lib.llama_sampler_free(sampler)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    try:
        version = importlib.metadata.version("llama-cpp-cffi")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    json.dump(
        {
            "backend": "llama.cpp (llama-cpp-cffi CPU build, weights as stored)",
            "version": version,
            "threads": args.threads,
            "prompt_tokens": len(prompt),
            "decode_tokens": args.decode_tokens,
            "iterations": iterations[1:],
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
