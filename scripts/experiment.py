#!/usr/bin/env python3
"""The LOGO experiment: base vs SFT vs SimPO vs LOGO on held-out documents, in committed stages.

    scripts/just experiment experiments/cpu.yaml --status     # every stage: done or pending
    scripts/just experiment experiments/cpu.yaml --next       # run the next pending stage
    scripts/just experiment experiments/cpu.yaml --next --commit   # ... and commit its results
    scripts/just experiment experiments/cpu.yaml --all        # every pending stage, in order
    scripts/just experiment experiments/cpu.yaml --report     # report.md from the done stages
    (or: python3 scripts/experiment.py CONFIG [FLAGS])

One YAML config (experiments/*.yaml) defines the recipe; it becomes a list of stages, each
short enough (about an hour or less on the target 2-core machine) to finish inside one working
session:

  data-leval-KofS    `logo-engine run --shard K/S` over the train documents' questions
  data-essays        essays with questions the policy writes (when `engine.essays` > 0)
  train-NAME-PofQ    part P of Q of one adapter (`logo-trainer --config train.yaml
                     --stop-after-step`, then `--resume` from the previous part's committed
                     checkpoint); train.yaml, in the stage's folder, is `train.common` with the
                     sweep point (or baseline) laid over it, in the trainer's own keys
                     (trainer/train.yaml lists them)
  val-logo_sweepI    validation QA of sweep point I (the sweep picks on validation only)
  test-MODEL-TASK    test-split evaluation of base / logo / sft / simpo: QA per file, NIAH
                     per needle set, sliding-window perplexity

Each stage runs in `out/experiment_NAME/tmp/STAGE/` and, only when it finished, is moved to
`bench/results/experiment_NAME/stages/STAGE/` with `stage.json` (its commands, seconds and
provenance: git commit, machine) written last; a stage is done exactly when that file exists,
so a stage cut short leaves nothing a rerun could take for a result (its tmp folder is removed
when the stage starts again). Later stages read earlier ones from the committed folder, so a
fresh clone with an empty cache reuses every committed stage and recomputes none. `--commit`
commits each finished stage at once (`git commit -- that folder`).

The split of the L-Eval documents into train / validation / test is by document (seeded) and is
recomputed each time; `split.json` in the results folder must agree with it. The report
(`--report`, also written after the last stage) is a function of the committed stages only:
running it twice gives the same bytes.

Binaries come from $LOGO_EXPERIMENT_BIN when set (a frozen copy, so that builds of newer code
during a long run do not change it), else $CARGO_TARGET_DIR/release (default
$LOGO_CACHE/target/release), built by `scripts/just build`.
"""

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from provenance import provenance  # noqa: E402


def log(msg):
    print(f"[experiment {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def binary(name):
    frozen = os.environ.get("LOGO_EXPERIMENT_BIN")
    if frozen:
        path = Path(frozen) / name
    else:
        cache = Path(os.environ.get("LOGO_CACHE", Path.home() / ".cache" / "logo"))
        target = Path(os.environ.get("CARGO_TARGET_DIR", cache / "target"))
        path = target / "release" / name
    if not path.exists():
        sys.exit(f"experiment: {path} not found (run `scripts/just build`)")
    return str(path)


def run(cmd, log_file, ok_codes=(0,)):
    """Runs `cmd`, its output appended to `log_file`; exits on a code outside `ok_codes`."""
    cmd = [str(c) for c in cmd]
    log("$ " + " ".join(cmd))
    with open(log_file, "a") as sink:
        sink.write("$ " + " ".join(cmd) + "\n")
        sink.flush()
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT)
    if proc.returncode not in ok_codes:
        tail = Path(log_file).read_text(errors="replace")[-4000:]
        sys.stderr.write(tail)
        sys.exit(f"experiment: {Path(cmd[0]).name} exited with {proc.returncode} (log {log_file})")
    return cmd


def load_config(path):
    with open(path) as f:
        cfg = yaml.safe_load(f)
    for key in ["name", "data", "engine", "train", "eval"]:
        if key not in cfg:
            sys.exit(f"experiment: {path}: missing key {key}")
    return cfg


def deep_merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def read_json(path):
    return json.loads(Path(path).read_text())


def write_json(path, value):
    Path(path).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


# --- The split ------------------------------------------------------------------------------

def split_documents(cfg, work):
    """Seeded split of every QA file's documents (rows) into train/validation/test; writes the
    three folders of JSONL files under `work/split/` and returns the split's summary."""
    data = cfg["data"]
    root = (ROOT / data["root"]).resolve()
    fractions = data["split"]
    seed = cfg.get("seed", 42)
    per_file = data.get("max_documents_per_file")
    split = {"train": [], "validation": [], "test": []}
    questions = {"train": 0, "validation": 0, "test": 0}
    per_file_questions = {s: {} for s in split}
    out = {s: work / "split" / s for s in split}
    for d in out.values():
        d.mkdir(parents=True, exist_ok=True)
    for name in data["qa_files"]:
        lines = [l for l in (root / name).read_text(encoding="utf-8").splitlines() if l.strip()]
        rows = []
        for i, line in enumerate(lines):
            try:
                row = json.loads(line, strict=False)
            except json.JSONDecodeError:
                continue  # the engine's source rejects it with a named error too
            n = len(row.get("instructions") or [])
            if n == 0 or not row.get("input"):
                continue
            rows.append((i + 1, line, n))
        rng = random.Random(f"{seed}:{name}")
        rng.shuffle(rows)
        if per_file:
            rows = rows[:per_file]
        n = len(rows)
        n_test = max(1, round(n * fractions["test"]))
        n_val = max(1, round(n * fractions["validation"]))
        parts = {
            "test": rows[:n_test],
            "validation": rows[n_test:n_test + n_val],
            "train": rows[n_test + n_val:],
        }
        cap = data.get("train_questions_per_document")
        for s, part in parts.items():
            with open(out[s] / name, "w", encoding="utf-8") as f:
                for row_no, line, nq in sorted(part):
                    if s == "train" and cap and nq > cap:
                        # Fewer training questions per document (the copy in the work folder).
                        row = json.loads(line, strict=False)
                        row["instructions"] = row["instructions"][:cap]
                        row["outputs"] = row["outputs"][:cap]
                        line, nq = json.dumps(row, ensure_ascii=False), cap
                    f.write(line + "\n")
                    split[s].append(f"{name}:{row_no}")
                    questions[s] += nq
                    per_file_questions[s][name] = per_file_questions[s].get(name, 0) + nq
    seen = {}
    for s, ids in split.items():
        for doc in ids:
            if doc in seen:
                sys.exit(f"experiment: document {doc} is in {seen[doc]} and {s}")
            seen[doc] = s
    return {
        "seed": seed,
        "documents": {s: len(v) for s, v in split.items()},
        "questions": questions,
        "questions_per_file": per_file_questions,
        "ids": split,
    }


# --- Stages ---------------------------------------------------------------------------------

class Stage:
    """One unit of the experiment: `name`, the stages it reads (`deps`), a kind and the amount
    of work (`units` of the kind's rate) for the time estimate, and `run(tmp)` which writes its
    results into `tmp` and returns the commands it ran."""

    def __init__(self, name, kind, units, deps, run):
        self.name, self.kind, self.units, self.deps, self.run = name, kind, units, deps, run


class Experiment:
    def __init__(self, config_path):
        self.config_path = Path(config_path)
        self.cfg = load_config(config_path)
        name = self.cfg["name"]
        self.work = ROOT / "out" / f"experiment_{name}"
        self.results = ROOT / self.cfg.get("report", f"bench/results/experiment_{name}")
        self.stages_dir = self.results / "stages"
        self.work.mkdir(parents=True, exist_ok=True)
        self.split = split_documents(self.cfg, self.work)
        committed = self.results / "split.json"
        if committed.exists() and read_json(committed).get("ids") != self.split["ids"]:
            sys.exit(f"experiment: {committed} differs from the split this config gives now "
                     "(config or data changed): the committed stages belong to another split")
        self.stages = self.plan()

    # The recipe as stages.

    def plan(self):
        cfg, stages = self.cfg, []
        self.stages = stages  # filled in place: later stages look up earlier ones by name
        eng, tr, ev = cfg["engine"], cfg["train"], cfg["eval"]
        shards = int(eng.get("shards", 1))
        train_q = self.split["questions"]["train"]
        data_names = []
        for k in range(shards):
            name = f"data-leval-{k}of{shards}"
            data_names.append(name)
            stages.append(Stage(name, "data_question", train_q / shards, [],
                                lambda tmp, k=k: self.run_data_leval(tmp, k, shards)))
        if eng.get("essays", 0):
            data_names.append("data-essays")
            stages.append(Stage("data-essays", "data_essay", eng["essays"], [],
                                lambda tmp: self.run_data_essays(tmp)))
        self.data_names = data_names
        part_steps = int(tr.get("part_steps", 10**9))
        sweep = tr["sweep"]
        val_names = []
        for i, point in enumerate(sweep):
            label = f"logo_sweep{i}"
            stages += self.train_stages(label, "logo", lambda point=point: point, part_steps,
                                        data_names)
            name = f"val-{label}"
            val_names.append(name)
            final = self.final_part(label, point, part_steps)
            stages.append(Stage(name, "qa_question", self.val_questions(), [final],
                                lambda tmp, label=label: self.run_eval(
                                    tmp, self.adapter_of(label), "validation",
                                    ev["validation"], "qa")))
        self.val_names = val_names
        budget_steps = max(int(p.get("max_steps", 0)) for p in sweep)
        for objective in tr.get("baselines", ["sft", "simpo"]):
            stages += self.train_stages(objective, objective,
                                        lambda o=objective: self.baseline_point(o),
                                        part_steps, data_names + val_names,
                                        steps=budget_steps)
        labels = ["base", "logo"] + list(tr.get("baselines", ["sft", "simpo"]))
        test = ev["test"]
        for label in labels:
            deps = self.model_deps(label)
            if test.get("qa"):
                for f, q in sorted(self.split["questions_per_file"]["test"].items()):
                    task = f.removesuffix(".jsonl")
                    stages.append(Stage(
                        f"test-{label}-qa-{task}", "qa_question", q, deps,
                        lambda tmp, label=label, f=f: self.run_eval(
                            tmp, self.adapter_of(label), "test", test["qa"], "qa", files=[f])))
            for spec in test.get("niah", []):
                tokens = sum(spec["lengths"]) * len(spec["depths"]) / 1024
                stages.append(Stage(
                    f"test-{label}-niah_{spec['needle']}", "niah_ktoken", tokens, deps,
                    lambda tmp, label=label, spec=spec: self.run_eval(
                        tmp, self.adapter_of(label), "test", spec, "niah")))
            if test.get("ppl"):
                spec = test["ppl"]
                stages.append(Stage(
                    f"test-{label}-ppl", "ppl_ktoken", spec["tokens"] / 1024, deps,
                    lambda tmp, label=label, spec=spec: self.run_eval(
                        tmp, self.adapter_of(label), "test", spec, "ppl")))
        self.labels = labels
        return stages

    def val_questions(self):
        per_doc = self.cfg["eval"]["validation"].get("qa_per_document", 10**9)
        n = 0
        for f in sorted((self.work / "split" / "validation").glob("*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    n += min(per_doc, len(json.loads(line, strict=False)["instructions"]))
        return n

    def train_steps(self, point, steps=None):
        return int(steps or point.get("max_steps") or 0)

    def train_stages(self, label, objective, point_of, part_steps, deps, steps=None):
        """The parts of one adapter's training: part P runs to step min((P + 1)·part_steps,
        max_steps) and resumes from part P − 1's checkpoint."""
        total = self.train_steps(point_of() if steps is None else {}, steps)
        if total <= 0:
            sys.exit(f"experiment: train {label}: max_steps must be set in the sweep point")
        parts = -(-total // part_steps)
        samples = self.cfg["train"].get("common", {})
        per_step = int(samples.get("batch_size", 1)) * int(samples.get("grad_accum", 1))
        out, prev = [], None
        for p in range(parts):
            name = f"train-{label}-{p}of{parts}"
            stop = min((p + 1) * part_steps, total)
            out.append(Stage(
                name, f"train_{objective}_sample", (stop - p * part_steps) * per_step,
                [prev] if prev else deps,
                lambda tmp, p=p, stop=stop, prev=prev: self.run_train(
                    tmp, objective, point_of(), stop, total, prev)))
            prev = name
        return out

    def final_part(self, label, point, part_steps):
        total = self.train_steps(point)
        parts = -(-total // part_steps)
        return f"train-{label}-{parts - 1}of{parts}"

    def model_deps(self, label):
        """The stages a model's evaluation needs: none for base, every validation run for
        logo (the sweep picks it), the last training part for a baseline."""
        if label == "base":
            return []
        if label == "logo":
            return list(self.val_names)
        prefix = f"train-{label}-"
        return [[s.name for s in self.stages if s.name.startswith(prefix)][-1]]

    def chosen(self):
        """The sweep point with the best validation QA F1 (ties: the first), from the
        committed validation stages."""
        scores = []
        for i, name in enumerate(self.val_names):
            qa = read_json(self.stage_dir(name) / "eval" / "adapter" / "qa.json")
            scores.append(qa["mean"]["f1"])
        return max(range(len(scores)), key=lambda i: (scores[i], -i)), scores

    def baseline_point(self, objective):
        """A baseline's trainer settings: the chosen sweep point's learning rate and steps
        (SimPO also its β and γ), then `train.<objective>` (e.g. `simpo: {loss: {sft_weight:
        0}}`)."""
        tr = self.cfg["train"]
        best, _ = self.chosen()
        chosen = tr["sweep"][best]
        keys = ["optim.lr", "max_steps"]
        if objective == "simpo":
            keys += ["loss.beta", "loss.gamma"]
        point = {}
        for key in keys:
            *sections, leaf = key.split(".")
            src, dst = chosen, point
            for sec in sections:
                src = src.get(sec, {})
                dst = dst.setdefault(sec, {})
            if leaf in src:
                dst[leaf] = src[leaf]
        return deep_merge(point, copy.deepcopy(tr.get(objective, {})))

    def adapter_of(self, label):
        if label == "base":
            return None
        if label == "logo":
            label = f"logo_sweep{self.chosen()[0]}"
        prefix = f"train-{label}-"
        final = [s.name for s in self.stages if s.name.startswith(prefix)][-1]
        return self.stage_dir(final)

    # Stage state.

    def stage_dir(self, name):
        return self.stages_dir / name

    def done(self, name):
        return (self.stage_dir(name) / "stage.json").exists()

    def rates(self):
        """Seconds per unit of each kind: measured on done stages where any, else the config's
        `estimates` (seconds per unit)."""
        est = dict(self.cfg.get("estimates", {}))
        measured = {}
        for s in self.stages:
            if self.done(s.name) and s.units:
                sec = read_json(self.stage_dir(s.name) / "stage.json")["seconds"]
                t, u = measured.get(s.kind, (0.0, 0.0))
                measured[s.kind] = (t + sec, u + s.units)
        for kind, (t, u) in measured.items():
            est[kind] = t / u
        return est, set(measured)

    def status(self):
        rates, measured = self.rates()
        total_done = total_left = 0.0
        print(f"{'stage':<34} {'state':<8} {'minutes':>8}  note")
        for s in self.stages:
            if self.done(s.name):
                sec = read_json(self.stage_dir(s.name) / "stage.json")["seconds"]
                total_done += sec / 60
                print(f"{s.name:<34} {'done':<8} {sec / 60:>8.1f}")
            else:
                rate = rates.get(s.kind)
                minutes = rate * s.units / 60 if rate is not None else float("nan")
                total_left += 0 if minutes != minutes else minutes
                ready = all(self.done(d) for d in s.deps)
                how = "measured rate" if s.kind in measured else "config estimate"
                note = f"est. ({how})" + ("" if ready else "; waits for " + ", ".join(
                    d for d in s.deps if not self.done(d)))
                print(f"{s.name:<34} {'pending':<8} {minutes:>8.1f}  {note}")
        print(f"done {total_done / 60:.1f} h, pending about {total_left / 60:.1f} h "
              f"({sum(self.done(s.name) for s in self.stages)} of {len(self.stages)} stages)")

    def next_stage(self):
        for s in self.stages:
            if not self.done(s.name) and all(self.done(d) for d in s.deps):
                return s
        return None

    def run_stage(self, stage, commit):
        tmp = self.work / "tmp" / stage.name
        if tmp.exists():
            shutil.rmtree(tmp)  # a stage cut short: start it again
        tmp.mkdir(parents=True)
        log(f"stage {stage.name}: started")
        started = time.time()
        prov = provenance(["scripts/experiment.py", str(self.config_path), "--stage",
                           stage.name])
        commands = stage.run(tmp)
        seconds = round(time.time() - started, 1)
        record = {"stage": stage.name, "seconds": seconds, "commands": commands, **prov}
        dest = self.stage_dir(stage.name)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        split = self.results / "split.json"
        if not split.exists():
            write_json(split, self.split)
        shutil.move(str(tmp), str(dest))
        write_json(dest / "stage.json", record)  # last: the stage is done from here on
        # The folder's provenance (tests/tests/bench_provenance.rs): its latest stage's.
        folder = self.results / "provenance.json"
        write_json(folder, {**prov, "latest_stage": stage.name})
        log(f"stage {stage.name}: done in {seconds / 60:.1f} min")
        if commit:
            self.commit([dest, split, folder], f"experiment {self.cfg['name']}: stage "
                        f"{stage.name} ({seconds / 60:.0f} min)")

    def commit(self, paths, message):
        rel = [str(Path(p).relative_to(ROOT)) for p in paths]
        for attempt in range(20):  # another git command may hold the index lock
            add = subprocess.run(["git", "add", "-f", "--", *rel], cwd=ROOT,
                                 capture_output=True, text=True)
            if add.returncode == 0:
                c = subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel],
                                   cwd=ROOT, capture_output=True, text=True)
                if c.returncode == 0:
                    log(f"committed: {message}")
                    return
                err = c.stderr
            else:
                err = add.stderr
            if "index.lock" not in err:
                sys.exit(f"experiment: git commit failed: {err}")
            time.sleep(3)
        sys.exit("experiment: git commit failed: the index stayed locked")

    # What the stages run.

    def run_data_leval(self, tmp, k, shards):
        eng = self.cfg["engine"]
        with open(ROOT / eng["pipeline"]) as f:
            pipeline = yaml.safe_load(f)
        files = sorted((self.work / "split" / "train").glob("*.jsonl"))
        pipeline["source"]["paths"] = [str(p) for p in files]
        deep_merge(pipeline, eng.get("overrides", {}))
        pipeline["sink"] = {**pipeline.get("sink", {}), "output": str(tmp / "out")}
        conf = tmp / "pipeline.yaml"
        conf.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        cmd = run([binary("logo-engine"), "run", conf, "--shard", f"{k}/{shards}", "--quiet",
                   "--output", tmp / "out"], tmp / "engine.log", ok_codes=(0, 1))
        self.keep_engine_output(tmp)
        return [cmd]

    def run_data_essays(self, tmp):
        eng = self.cfg["engine"]
        with open(ROOT / eng.get("essay_pipeline", "pipeline.yaml")) as f:
            ep = yaml.safe_load(f)
        deep_merge(ep, eng.get("essay_overrides", {}))
        ep["sink"] = {**ep.get("sink", {}), "output": str(tmp / "out")}
        conf = tmp / "pipeline.yaml"
        conf.write_text(yaml.safe_dump(ep, sort_keys=False))
        cmd = run([binary("logo-engine"), "run", conf, "--limit", eng["essays"], "--quiet",
                   "--output", tmp / "out"], tmp / "engine.log", ok_codes=(0, 1))
        self.keep_engine_output(tmp)
        return [cmd]

    @staticmethod
    def keep_engine_output(tmp):
        """Keeps the parts, manifest, rejects and unit records; drops the replay cache (it
        only saves generation time on a rerun of the same stage)."""
        cache = tmp / "out" / "cache"
        if cache.exists():
            shutil.rmtree(cache)

    def data_folder(self):
        """A folder of links to every data stage's parts: the trainer's `--data`."""
        folder = self.work / "data"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name in self.data_names:
            for part in sorted((self.stage_dir(name) / "out").glob("*.parquet")):
                (folder / f"{name}-{part.name}").symlink_to(part)
        return folder

    def trainer_settings(self, objective, point, total):
        """What one adapter's training stages write to `train.yaml` (logo-trainer's keys):
        seed (the experiment's), no intermediate checkpoints, no progress bar, then
        `train.common`, the sweep point, the objective and `max_steps`."""
        settings = {"seed": self.cfg.get("seed", 42), "save_steps": 0, "progress": False}
        deep_merge(settings, copy.deepcopy(self.cfg["train"].get("common", {})))
        deep_merge(settings, copy.deepcopy(point))
        return deep_merge(settings, {"loss": {"objective": objective}, "max_steps": total})

    def run_train(self, tmp, objective, point, stop, total, prev):
        out = tmp / "adapter"
        out.mkdir()
        conf = tmp / "train.yaml"
        conf.write_text(yaml.safe_dump(self.trainer_settings(objective, point, total),
                                       sort_keys=False))
        args = [binary("logo-trainer"), "--config", conf, "--data", self.data_folder(),
                "--output", out]
        if prev:
            before = self.stage_dir(prev) / "adapter"
            shutil.copy(before / "metrics.jsonl", out / "metrics.jsonl")
            checkpoint = max(before.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            args += ["--resume", checkpoint]
        if stop < total:
            args += ["--stop-after-step", stop]
        cmd = run(args, tmp / "train.log")
        # Kept: the checkpoint the next part resumes from; none after the last part (the
        # final adapter is the result, its checkpoint only repeats it).
        checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for c in checkpoints if stop == total else checkpoints[:-1]:
            shutil.rmtree(c)
        return [cmd]

    def run_eval(self, tmp, adapter, split, spec, tasks, files=None):
        ev = self.cfg["eval"]
        out = tmp / "eval"
        args = [binary("logo-eval"), "--out", out, "--generator", ev.get("generator", "torch"),
                "--tasks", tasks]
        if ev.get("threads"):
            args += ["--threads", ev["threads"]]
        if ev.get("device"):
            args += ["--device", ev["device"]]
        if adapter:
            args += ["--adapter", adapter / "adapter"]
        if tasks == "qa":
            paths = sorted((self.work / "split" / split).glob("*.jsonl"))
            if files:
                paths = [p for p in paths if p.name in files]
            args += ["--qa", ",".join(str(f) for f in paths),
                     "--qa-questions", spec.get("qa_questions", 1000),
                     "--qa-per-document", spec.get("qa_per_document", 1000),
                     "--max-length", spec["max_length"],
                     "--max-new-tokens", spec.get("max_new_tokens", 32)]
        if tasks == "niah":
            args += ["--needle", spec["needle"],
                     "--niah-lengths", ",".join(str(x) for x in spec["lengths"]),
                     "--niah-depths", ",".join(str(x) for x in spec["depths"]),
                     "--niah-new-tokens", spec.get("new_tokens", 32)]
        if tasks == "ppl":
            args += ["--ppl-lengths", ",".join(str(x) for x in spec["lengths"]),
                     "--ppl-tokens", spec["tokens"], "--ppl-batch", spec.get("batch", 1)]
        return [run(args, tmp / "eval.log")]

    # The report.

    def model_file(self, stage, name):
        out = self.stage_dir(stage) / "eval"
        for sub in ["adapter", "base"]:
            if (out / sub / name).exists():
                return out / sub / name
        sys.exit(f"experiment: no {name} in {out}")

    def merged_qa(self, label):
        """One QA report over the test files of `label` (one stage per file)."""
        files, items, rejected, seconds, longest, truncation, generator = [], [], 0, 0.0, 0, "", ""
        for s in self.stages:
            if s.name.startswith(f"test-{label}-qa-"):
                r = read_json(self.model_file(s.name, "qa.json"))
                files += r["files"]
                items += r["items"]
                rejected += r.get("rejected_rows", 0)
                seconds += r.get("seconds", 0.0)
                longest = max(longest, r.get("max_length", 0))
                truncation, generator = r.get("truncation", ""), r.get("generator", "")
        if not files:
            return None
        keys = files[0]["mean"].keys() if "mean" in files[0] else []
        mean = {k: sum(f["mean"][k] for f in files) / len(files) for k in keys}
        merged = {"files": files, "mean": mean, "max_length": longest,
                  "truncation": truncation, "rejected_rows": rejected, "items": items,
                  "generator": generator, "seconds": round(seconds, 3)}
        path = self.work / "merged" / f"qa_{label}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, merged)
        return path

    def report(self):
        pending = [s.name for s in self.stages if not self.done(s.name)]
        if pending:
            log(f"report: {len(pending)} stage(s) pending ({', '.join(pending[:4])}…); "
                "the report covers the done ones")
        models = []
        for label in self.labels:
            if not all(self.done(d) for d in self.model_deps(label)):
                continue
            entry = {"label": label, "niah": {}, "adapter": None}
            if label != "base":
                adapter = self.adapter_of(label) / "adapter"
                entry["adapter"] = str(adapter.relative_to(ROOT))
                entry["metrics"] = str(adapter / "metrics.jsonl")
            if all(self.done(s.name) for s in self.stages
                   if s.name.startswith(f"test-{label}-qa-")):
                qa = self.merged_qa(label)
                if qa:
                    entry["qa"] = str(qa)
            for spec in self.cfg["eval"]["test"].get("niah", []):
                name = f"test-{label}-niah_{spec['needle']}"
                if self.done(name):
                    entry["niah"][spec["needle"]] = str(self.model_file(name, "niah.json"))
            if self.done(f"test-{label}-ppl"):
                entry["perplexity"] = str(self.model_file(f"test-{label}-ppl",
                                                          "perplexity.json"))
            models.append(entry)
        sweep = []
        if all(self.done(n) for n in self.val_names):
            best, scores = self.chosen()
            for i, point in enumerate(self.cfg["train"]["sweep"]):
                qa = read_json(self.model_file(self.val_names[i], "qa.json"))
                sweep.append({"point": point, "validation_f1": scores[i],
                              "validation_rouge_l": qa["mean"]["rouge_l"],
                              "questions": len(qa["items"])})
            sweep = {"chosen": best, "criterion": "validation QA token F1 (mean over files)",
                     "points": sweep}
        stage_rows = {}
        for s in self.stages:
            if self.done(s.name):
                r = read_json(self.stage_dir(s.name) / "stage.json")
                stage_rows[s.name] = {"minutes": round(r["seconds"] / 60, 1),
                                      "git_commit": r["git_commit"][:12],
                                      "cpu": r["machine"]["cpu"]}
        data = {}
        for name in self.data_names:
            if self.done(name):
                m = read_json(self.stage_dir(name) / "out" / "manifest.json")
                for key, val in (m.get("stats") or m.get("counters") or {}).items():
                    if isinstance(val, dict):
                        for k, v in val.items():
                            data.setdefault(key, {})
                            data[key][k] = data[key].get(k, 0) + v
        split = {k: self.split[k] for k in ["documents", "questions", "seed"]}
        runs = {"name": self.cfg["name"], "label": self.cfg.get("label", ""),
                "config": str(self.config_path), "models": models, "sweep": sweep,
                "split": split, "data": data, "stages": stage_rows,
                "stages_done": f"{len(stage_rows)} of {len(self.stages)}"}
        runs_path = self.work / "runs.json"
        write_json(runs_path, runs)
        shutil.copy(self.config_path, self.results / "config.yaml")
        run([binary("logo-experiment-report"), "--runs", runs_path, "--out", self.results],
            self.work / "report.log")
        log(f"report in {self.results.relative_to(ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="list every stage, done or pending")
    what.add_argument("--next", action="store_true", help="run the next pending stage")
    what.add_argument("--stage", help="run this stage (its inputs must be done)")
    what.add_argument("--all", action="store_true", help="run every pending stage in order")
    what.add_argument("--report", action="store_true", help="write the report from done stages")
    ap.add_argument("--commit", action="store_true", help="git-commit each finished stage")
    a = ap.parse_args()
    exp = Experiment(a.config)
    if a.status:
        exp.status()
    elif a.stage:
        stage = next((s for s in exp.stages if s.name == a.stage), None)
        if stage is None:
            sys.exit(f"experiment: no stage {a.stage} (see --status)")
        missing = [d for d in stage.deps if not exp.done(d)]
        if missing:
            sys.exit(f"experiment: {a.stage} needs {', '.join(missing)} first")
        exp.run_stage(stage, a.commit)
    elif a.report:
        exp.report()
    else:
        while True:
            stage = exp.next_stage()
            if stage is None:
                if all(exp.done(s.name) for s in exp.stages):
                    exp.report()
                else:
                    log("no stage is ready")
                break
            exp.run_stage(stage, a.commit)
            if a.next:
                break


if __name__ == "__main__":
    main()
