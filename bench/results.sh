#!/usr/bin/env bash
# Regenerates the committed results of bench/results/, each through the one command that writes
# it (every JSON then carries that command, the git commit and the machine: bench/provenance.py;
# tests/tests/bench_provenance.rs fails on one that does not). Run from `scripts/just results`
# (all, in this order; several hours on 2 cores) or `scripts/just results NAME...`.
# Timings are only worth committing from an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
all=(shared_prompt trainer_step engine_stages generation generation_server eval_speed
     eval_embedded experiment_tiny kill_harness kill_harness_server kernel_check fuzz)
[ $# -gt 0 ] || set -- "${all[@]}"
bench_python() { scripts/setup-bench-venv.sh; }
for name in "$@"; do
    echo "results: $name" >&2
    case "$name" in
        shared_prompt) bench/shared_prompt.sh ;;                 # shared_prompt_cpu.json
        trainer_step) bench/trainer_side_by_side.sh 1024 2 ;;    # trainer_step_cpu_p1024_m2.json
        engine_stages) LOGO_BENCH_PYTHON=$(bench_python) cargo bench --workspace --bench stages ;;
        generation) LOGO_BENCH_PYTHON=$(bench_python) cargo bench --workspace --bench generation ;;
        generation_server) python3 bench/generation_server.py --limit 2 ;;
        eval_speed) bench/eval_speed.sh ;;
        eval_embedded) bench/eval_embedded.sh ;;                 # eval_embedded/
        experiment_tiny) python3 scripts/experiment.py experiments/tiny.yaml ;;  # experiment_tiny/
        kill_harness) python3 scripts/kill-harness.py --trials 20 --limit 2 ;;
        kill_harness_server) python3 scripts/kill-harness.py --server --trials 20 --limit 3 ;;
        kernel_check) scripts/kernel-check.sh --runs 2 --json bench/results/kernel_check.json \
                          avx2 avx512 default ;;
        fuzz) scripts/fuzz.sh 600 ;;
        *) echo "results: unknown result '$name' (one of: ${all[*]})" >&2; exit 2 ;;
    esac
done
