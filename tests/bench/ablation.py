#!/usr/bin/python3
"""The Lipschitz ablation: does layer-specific modulation help?

For each dataset (the built-in plant simulator, SKAB's anomaly-free recording) and
each variant of Lipschitz modulation and gradient clipping, train a model with
several training seeds on the first 70 % of the recording and evaluate it with
`faultline eval` on the rest, on the SAME injected faults (eval's seed is fixed), so
the variants differ only in how they were trained.  Prints one table per dataset
(mean and standard deviation over the seeds) and writes every eval JSON under --out.

Variants (targets are the per-layer spectral-norm caps; 0 switches a cap off):
  none       no projection, no gradient clipping
  clip       gradient clipping only (the default per-module limits)
  global     one target, 2.0, for every layer, and clipping
  layer      layer-specific targets (the design's: encoder, decoder, head 2.0,
             compute block 1.0), and clipping
  layer-b4   layer-specific with a looser compute block (4.0), and clipping

Usage:
  /usr/bin/python3 tests/bench/ablation.py [--build build] [--out out/ablation]
      [--seeds 1,2,3] [--datasets sim,skab] [--variants none,clip,...] [--quick]
      [--skab PATH/anomaly-free.csv]

--recalibrate judges models trained earlier (by an older build) with this build's
detector: `faultline calibrate` with the run's config, then eval (<tag>.final.json);
analysis and training time stay the trained model's.

Each run trains (timed), evaluates (`faultline eval --json`) and analyses
(`faultline analyze --json`: path bounds and measured gains of unit faults).  Runs
are cached under --out (delete it to start over), and two processes started with
the same --out share the runs (a .lock file marks a run in progress), which is how
both cores are used.  --quick (or FAULTLINE_QUICK=1) trains 3 + 2 epochs on a short
simulated recording with one seed: a smoke test of the script, not a result.
SKAB is read from ../shared/data/skab (GPL-3.0, Katser and Kozitsin 2020) and the
dataset is skipped, with a message, when it is absent.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKAB_AF = os.path.join(ROOT, "..", "shared", "data", "skab", "anomaly-free",
                       "anomaly-free.csv")

VARIANTS = {
    "none": dict(target_encoder=0, target_decoder=0, target_block=0, target_head=0,
                 clip_encoder=0, clip_decoder=0, clip_block=0, clip_head=0),
    "clip": dict(target_encoder=0, target_decoder=0, target_block=0, target_head=0),
    "global": dict(target_encoder=2, target_decoder=2, target_block=2, target_head=2),
    "layer": dict(target_encoder=2, target_decoder=2, target_block=1, target_head=2),
    "layer-b4": dict(target_encoder=2, target_decoder=2, target_block=4, target_head=2),
}
MODEL_KEYS = ("target_encoder", "target_decoder", "target_block", "target_head")


def split(src, train, held):
    """Writes the first 70 % of the data rows of src to train, the rest to held."""
    with open(src) as f:
        lines = f.readlines()
    n = len(lines) - 1
    k = n * 7 // 10
    with open(train, "w") as f:
        f.writelines(lines[:k + 1])
    with open(held, "w") as f:
        f.writelines(lines[:1] + lines[k + 1:])


def write_config(base, path, variant, quick):
    """The dataset's config with the variant's keys appended (inih: last one wins)."""
    with open(base) as f:
        text = f.read()
    over = VARIANTS[variant]
    text += "\n; ablation variant %s\n[model]\n" % variant
    text += "".join("%s = %g\n" % (k, v) for k, v in over.items() if k in MODEL_KEYS)
    text += "[train]\n"
    text += "".join("%s = %g\n" % (k, v) for k, v in over.items() if k not in MODEL_KEYS)
    if quick:
        text += "epochs1 = 3\nepochs2 = 2\n"
    with open(path, "w") as f:
        f.write(text)


def run(cmd, log):
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit("ablation: %s failed (exit %d), see %s" % (cmd[1], r.returncode, log))


def load_run(js, an, tm):
    out = {}
    for key, path in (("eval", js), ("analyze", an)):
        with open(path) as f:
            out[key] = json.load(f)
    with open(tm) as f:
        out["train_s"] = float(f.read())
    return out


def one(args, ds, base_cfg, variant, seed):
    """Trains, evaluates and analyses one (dataset, variant, seed).

    Returns {"eval": eval JSON, "analyze": analyze JSON, "train_s": seconds}, or
    None when another ablation process holds the run (a .lock file): two
    processes with the same --out share the work."""
    d = os.path.join(args.out, ds)
    tag = "%s-s%d" % (variant, seed)
    js, an, tm = (os.path.join(d, tag + e) for e in (".json", ".analyze.json", ".time"))
    if args.recalibrate:
        out = one_recalibrated(args, d, tag, base_cfg, variant)
        if out is None and not os.path.exists(os.path.join(d, tag + ".lock")) and \
                not os.path.exists(os.path.join(d, tag + ".model")):
            sys.exit("ablation: %s/%s is not trained; run without --recalibrate first" % (d, tag))
        return out
    if not (os.path.exists(js) and os.path.exists(an) and os.path.exists(tm)):
        lock = os.path.join(d, tag + ".lock")
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return None
        try:
            cfg = os.path.join(d, tag + ".ini")
            model = os.path.join(d, tag + ".model")
            log = os.path.join(d, tag + ".log")
            fl = os.path.join(args.build, "tools", "faultline")
            if not os.path.exists(model):
                write_config(base_cfg, cfg, variant, args.quick)
                t0 = time.monotonic()
                run([fl, "train", "--config", cfg, "--data", os.path.join(d, "train.csv"),
                     "--out", model, "--seed", str(seed), "--quiet"], log)
                with open(tm, "w") as f:
                    f.write("%.2f\n" % (time.monotonic() - t0))
            if not os.path.exists(tm):
                # Trained by an earlier version of this script: the config is
                # written just before training starts, the model when it ends.
                with open(tm, "w") as f:
                    f.write("%.2f\n" % (os.path.getmtime(model) - os.path.getmtime(cfg)))
            if not os.path.exists(js):
                run([fl, "eval", "--model", model, "--config", cfg, "--data",
                     os.path.join(d, "held.csv"), "--seed", "1", "--json", js + ".tmp"], log)
                os.rename(js + ".tmp", js)
            if not os.path.exists(an):
                run([fl, "analyze", "--model", model, "--data", os.path.join(d, "held.csv"),
                     "--json", an + ".tmp"], log)
                os.rename(an + ".tmp", an)
        finally:
            os.unlink(lock)
    return load_run(js, an, tm)


def one_recalibrated(args, d, tag, base_cfg, variant):
    """--recalibrate: the run's trained model, its detector set anew by this
    build (`faultline calibrate` on the training part with the dataset's
    current config and the variant's keys) and evaluated again, so that
    models trained by an older build are judged by the current detector.
    None while the model is not trained yet or another process holds it."""
    model, cfg = os.path.join(d, tag + ".model"), os.path.join(d, tag + ".final.ini")
    js, an, tm = (os.path.join(d, tag + e) for e in (".final.json", ".analyze.json", ".time"))
    if not (os.path.exists(model) and os.path.exists(tm) and os.path.exists(an)):
        return None
    if not os.path.exists(js):
        lock = os.path.join(d, tag + ".final.lock")
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return None
        try:
            fl = os.path.join(args.build, "tools", "faultline")
            write_config(base_cfg, cfg, variant, args.quick)
            log = os.path.join(d, tag + ".final.log")
            final = os.path.join(d, tag + ".final.model")
            run([fl, "calibrate", "--model", model, "--config", cfg, "--data",
                 os.path.join(d, "train.csv"), "--out", final], log)
            run([fl, "eval", "--model", final, "--config", cfg, "--data",
                 os.path.join(d, "held.csv"), "--seed", "1", "--json", js + ".tmp"], log)
            os.rename(js + ".tmp", js)
        finally:
            os.unlink(lock)
    return load_run(js, an, tm)


def fmt(vals, digits=3):
    """Mean and, over several seeds, the sample standard deviation."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return "%.*f" % (digits, vals[0])
    return "%.*f ± %.*f" % (digits, statistics.mean(vals), digits, statistics.stdev(vals))


def table(title, cols, rows):
    print("\n" + title)
    print("| variant | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for name, vals in rows:
        print("| %s | %s |" % (name, " | ".join(vals)))


def gain(a, mod, path, stat="median"):
    m = a["measurements"][mod][path]
    return m["all"][stat]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "ablation"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--datasets", default="sim,skab")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sim-rows", type=int, default=8000)
    ap.add_argument("--skab", default=SKAB_AF, help="SKAB's anomaly-free.csv")
    ap.add_argument("--recalibrate", action="store_true",
                    help="judge the trained models of --out by this build's detector")
    ap.add_argument("--quick", action="store_true",
                    default=os.environ.get("FAULTLINE_QUICK") == "1")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = args.datasets.split(",")
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit("ablation: unknown variant %r (have %s)" % (v, ", ".join(VARIANTS)))
    if args.quick:
        seeds, datasets, args.sim_rows = seeds[:1], ["sim"], 2400
    fl = os.path.join(args.build, "tools", "faultline")
    if not os.access(fl, os.X_OK):
        sys.exit("ablation: %s not found; build first (meson setup build && ninja -C build)" % fl)

    results = {}
    pending = True
    while pending:
        pending = False
        for ds in datasets:
            d = os.path.join(args.out, ds)
            os.makedirs(d, exist_ok=True)
            if ds == "sim":
                base = os.path.join(ROOT, "config", "plant.ini")
                src = os.path.join(d, "plant.csv")
                if not os.path.exists(src):
                    run([fl, "simulate", "--rows", str(args.sim_rows), "--seed", "1",
                         "--out", src + ".tmp"], os.path.join(d, "simulate.log"))
                    os.rename(src + ".tmp", src)
            elif ds == "skab":
                base = os.path.join(ROOT, "config", "skab-sensors.ini")
                src = args.skab
                if not os.path.exists(src):
                    print("ablation: %s is absent; SKAB skipped" % src)
                    continue
            else:
                sys.exit("ablation: unknown dataset %r (sim, skab)" % ds)
            if not os.path.exists(os.path.join(d, "held.csv")):
                split(src, os.path.join(d, "train.csv"), os.path.join(d, "held.csv"))
            for v in variants:
                for s in seeds:
                    if (ds, v, s) in results:
                        continue
                    r = one(args, ds, base, v, s)
                    if r is None:
                        pending = True
                        continue
                    results[(ds, v, s)] = r
                    print("ablation: %s %s seed %d: AUROC %.3f, trained in %.0f s" %
                          (ds, v, s, r["eval"]["overall"]["auroc"], r["train_s"]), flush=True)
        if pending:
            time.sleep(10)  # another process is on the rest

    for ds in datasets:
        runs = {v: [results[(ds, v, s)] for s in seeds if (ds, v, s) in results]
                for v in variants}
        if not any(runs.values()):
            continue
        head = "%s: mean ± sd over training seeds %s (eval seed 1, same faults%s)" % (
            ds, ",".join(map(str, seeds)),
            "; detector of this build, recalibrated" if args.recalibrate else "")
        cols = ["AUROC", "localisation", "clean FAR", "RMSE corrected", "RMSE block estimate",
                "RMSE stage-1", "RMSE input", "train s"]
        rows = []
        for v, rs in runs.items():
            o = [r["eval"]["overall"] for r in rs]
            rows.append((v, [
                fmt([x["auroc"] for x in o]),
                fmt([x["localisation"] for x in o], 2),
                fmt([r["eval"]["clean"]["far"] for r in rs]),
                fmt([x["rmse"]["corrected"] for x in o], 2),
                fmt([x["rmse"]["estimate"] for x in o], 2),
                fmt([x["rmse"]["stage1"] for x in o], 2),
                fmt([x["rmse"]["input"] for x in o], 2),
                fmt([r["train_s"] for r in rs], 0)]))
        table(head, cols, rows)
        types = list(next(r for rs in runs.values() for r in rs)["eval"]["faults"])
        rows = [(v, [fmt([r["eval"]["faults"][t]["auroc"] for r in rs], 2) for t in types])
                for v, rs in runs.items()]
        table("%s: detection AUROC per fault type" % ds, types, rows)
        rows = [(v, [fmt([r["eval"]["faults"][t]["rmse"]["corrected"] for r in rs], 2)
                     for t in types]) for v, rs in runs.items()]
        table("%s: corrected RMSE per fault type (sd; input: %s)" % (ds, ", ".join(
            "%s %.2f" % (t, next(r for rs in runs.values() for r in rs)["eval"]["faults"][t]
                         ["rmse"]["input"] or float("nan")) for t in types)), types, rows)
        mods = list(next(r for rs in runs.values() for r in rs)["analyze"]["measurements"])
        cols = []
        for m in mods:
            cols += ["%s detection" % m, "%s correction" % m]
        rows = []
        for v, rs in runs.items():
            vals = []
            for m in mods:
                for path in ("detection", "correction"):
                    b = fmt([r["analyze"]["bounds"]["modalities"][m][path] for r in rs], 1)
                    g = fmt([gain(r["analyze"], m, path, "max") for r in rs], 2)
                    vals.append("%s / %s" % (g, b))
            rows.append((v, vals))
        table("%s: measured max gain / bound per path (faultline analyze, unit faults)" % ds,
              cols, rows)

if __name__ == "__main__":
    main()
