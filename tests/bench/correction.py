#!/usr/bin/python3
"""The corrected signal's benchmark: docs/results/correction.md.

For each dataset (SKAB's anomaly-free recording with config/skab-sensors.ini,
the plant simulator with config/plant.ini) and each training seed, trains on
the first 70 % and runs `faultline eval` on the rest with the training part
as the AAKR baseline's memory; prints the medians over the seeds of the RMSE
over faulted samples of every estimate (mean over the fault types and per
type), the targets' ratios, detection and clean-row numbers, and the
training time.  SKAB is read from ../shared/data/skab (skipped when absent).

    /usr/bin/python3 tests/bench/correction.py --faultline build/tools/faultline \
        --out /tmp/correction [--seeds 1,2,3] [--datasets skab,sim] [--json FILE] [--reuse]
        [--base OLD_BUILD/tools/faultline]

With FAULTLINE_QUICK=1 in the environment (the documentation's commands are
run that way) it runs the first seed on 3000 simulated rows with 4 + 3
epochs only: the commands and files work, the numbers mean nothing.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

QUICK = os.environ.get("FAULTLINE_QUICK") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKAB = os.path.join(ROOT, "..", "shared", "data", "skab", "anomaly-free", "anomaly-free.csv")
EST = ["corrected", "hold", "aakr", "oracle_mask", "interp", "estimate", "stage1", "input"]


def with_seed(cfg_text, seed):
    """The config with [train] seed set."""
    lines = cfg_text.splitlines()
    out, in_train, done = [], False, False
    for ln in lines:
        m = re.match(r"\s*\[(.+)\]\s*$", ln)
        if m:
            if in_train and not done:
                out.append(f"seed = {seed}")
                done = True
            in_train = m.group(1).strip() == "train"
        elif in_train and re.match(r"\s*seed\s*=", ln):
            ln, done = f"seed = {seed}", True
        out.append(ln)
    if in_train and not done:
        out.append(f"seed = {seed}")
        done = True
    if not done:
        out += ["", "[train]", f"seed = {seed}"]
    return "\n".join(out) + "\n"


def split(src, train, held):
    with open(src) as f:
        lines = f.readlines()
    k = (len(lines) - 1) * 7 // 10
    with open(train, "w") as f:
        f.writelines(lines[:k + 1])
    with open(held, "w") as f:
        f.writelines(lines[:1] + lines[k + 1:])


def run_one(fl, out, name, data, cfg, seed, reuse=False, base=None):
    d = os.path.join(out, f"{name}-{seed}")
    os.makedirs(d, exist_ok=True)
    train, held = os.path.join(d, "train.csv"), os.path.join(d, "held.csv")
    split(data, train, held)
    ini = os.path.join(d, "config.ini")
    with open(cfg) as f:
        text = f.read()
    with open(ini, "w") as f:
        f.write(with_seed(text, seed))
        if QUICK:
            f.write("\n[train]\nepochs1 = 4\nepochs2 = 3\n")
    model, js = os.path.join(d, "model"), os.path.join(d, "eval.json")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    cpu_file = os.path.join(d, "train_cpu_s")
    if reuse and os.path.exists(model):
        cpu = float("nan")
        if os.path.exists(cpu_file):
            with open(cpu_file) as f:
                cpu = float(f.read())
    else:
        r0 = os.times()
        subprocess.run([fl, "train", "--config", ini, "--data", train, "--out", model,
                        "--quiet"], check=True, env=env)
        r1 = os.times()
        cpu = (r1.children_user + r1.children_system) - (r0.children_user + r0.children_system)
        with open(cpu_file, "w") as f:
            f.write(f"{cpu}\n")
    if not (reuse and os.path.exists(js)):
        subprocess.run([fl, "eval", "--model", model, "--config", ini, "--data", held,
                        "--memory", train, "--json", js], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    with open(js) as f:
        ev = json.load(f)
    ev["train_cpu_s"] = cpu
    if base:
        # The same model through an older build's eval (which ignores the
        # estimator's tensors): the corrected output before the estimator.
        bj = os.path.join(d, "base-eval.json")
        if not (reuse and os.path.exists(bj)):
            subprocess.run([base, "eval", "--model", model, "--config", ini, "--data", held,
                            "--json", bj], check=True, env=env, stdout=subprocess.DEVNULL)
        with open(bj) as f:
            ev["base"] = json.load(f)
    return ev


def mean_over_types(ev, key):
    v = [f["rmse"][key] for f in ev["faults"].values() if f["rmse"].get(key) is not None]
    return sum(v) / len(v) if v else float("nan")


def med(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def report(name, evs):
    print(f"\n## {name}: medians over seeds {', '.join(str(e['_seed']) for e in evs)}\n")
    print("| estimate | RMSE over faulted samples, mean over fault types (sd) |")
    print("| --- | --- |")
    m = {k: med([mean_over_types(e, k) for e in evs]) for k in EST}
    for k in EST:
        print(f"| {k} | {m[k]:.3f} |")
    has_base = all("base" in e for e in evs)
    if has_base:
        print(f"| corrected, --base build | "
              f"{med([mean_over_types(e['base'], 'corrected') for e in evs]):.3f} |")
    c = m["corrected"]
    miss = med([e["faults"]["missing"]["rmse"]["corrected"] / e["faults"]["missing"]["rmse"]["aakr"]
                for e in evs if "missing" in e["faults"]])
    print("\n| target | value | met |")
    print("| --- | --- | --- |")
    r1 = med([mean_over_types(e, "corrected") / mean_over_types(e, "aakr") for e in evs])
    r2 = med([mean_over_types(e, "corrected") / mean_over_types(e, "hold") for e in evs])
    print(f"| corrected / AAKR <= 0.8 | {r1:.2f} | {'yes' if r1 <= 0.8 else 'no'} |")
    print(f"| corrected / hold <= 0.7 | {r2:.2f} | {'yes' if r2 <= 0.7 else 'no'} |")
    print(f"| missing: corrected / AAKR <= 0.75 | {miss:.2f} | {'yes' if miss <= 0.75 else 'no'} |")
    worse = []
    for t in evs[0]["faults"]:
        a = med([e["faults"][t]["rmse"]["corrected"] for e in evs])
        h = med([e["faults"][t]["rmse"]["hold"] for e in evs])
        if a > h:
            worse.append(f"{t} {a:.2f} > {h:.2f}")
    print(f"| no type worse than hold | {'; '.join(worse) or 'none'} | {'no' if worse else 'yes'} |")
    cols = EST + (["base corrected"] if has_base else [])
    print("\n| fault | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for t in evs[0]["faults"]:
        vals = [med([e["faults"][t]["rmse"][k] for e in evs]) for k in EST]
        if has_base:
            vals.append(med([e["base"]["faults"][t]["rmse"]["corrected"] for e in evs]))
        print(f"| {t} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    rows = [("AUROC (all types pooled)", lambda e: e["overall"]["auroc"], 3),
            ("episodes detected", lambda e: e["overall"]["detection_rate"], 3),
            ("modality named (of detected)", lambda e: e["overall"]["localisation"], 3),
            ("clean recording: rows flagged", lambda e: e["clean"]["far"], 4),
            ("clean rows: corrected vs input RMSE (sd)",
             lambda e: e["overall"]["rmse"]["clean"], 4),
            ("settled clean rows: RMSE (sd)", lambda e: e["overall"]["rmse"]["clean_settled"], 4)]
    print("\n| detection and clean rows | value |" + (" --base build |" if has_base else ""))
    print("| --- | --- |" + (" --- |" if has_base else ""))
    for name, f, nd in rows:
        line = f"| {name} | {med([f(e) for e in evs]):.{nd}f} |"
        if has_base:
            line += f" {med([f(e['base']) for e in evs]):.{nd}f} |"
        print(line)
    print(f"| training CPU time (s) | {med([e['train_cpu_s'] for e in evs]):.2f} |" +
          (" |" if has_base else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--faultline", default=os.path.join(ROOT, "build", "tools", "faultline"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--datasets", default="skab,sim")
    ap.add_argument("--sim-rows", type=int, default=12000)
    ap.add_argument("--json")
    ap.add_argument("--base", help="an older build's faultline: its corrected output and "
                    "detection on the same models beside")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the models and evaluations a previous run left in --out (a "
                    "changed eval: delete its eval.json files)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    if QUICK:
        seeds, a.datasets, a.sim_rows = seeds[:1], "sim", 3000
    allres = {}
    for ds in a.datasets.split(","):
        if ds == "skab":
            if not os.path.exists(SKAB):
                print(f"skab: {SKAB} is absent, skipped", file=sys.stderr)
                continue
            data, cfg = SKAB, os.path.join(ROOT, "config", "skab-sensors.ini")
        elif ds == "sim":
            data, cfg = os.path.join(a.out, "plant.csv"), os.path.join(ROOT, "config", "plant.ini")
            if not os.path.exists(data):
                subprocess.run([a.faultline, "simulate", "--rows", str(a.sim_rows), "--seed", "1",
                                "--out", data], check=True)
        else:
            sys.exit(f"unknown dataset {ds}")
        evs = []
        for s in seeds:
            ev = run_one(a.faultline, a.out, ds, data, cfg, s, a.reuse, a.base)
            ev["_seed"] = s
            evs.append(ev)
        allres[ds] = evs
        report(ds, evs)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(allres, f, indent=1)


if __name__ == "__main__":
    main()
