#!/usr/bin/python3
"""The Lipschitz ablation of issue 5: does layer-specific modulation help?

For each dataset (the built-in plant simulator, SKAB's anomaly-free recording) and
each variant of Lipschitz modulation and gradient clipping, train a model with
several training seeds on the first 70 % of the recording and evaluate it with
`faultline eval` on the rest, on the SAME injected faults (eval's seed is fixed), so
the variants differ only in how they were trained.  Prints one table per dataset
(medians over the seeds, and the spread) and writes every eval JSON under --out.

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

Runs are cached: a run whose eval JSON exists is not repeated (delete --out to
start over).  --quick (or FAULTLINE_QUICK=1) trains 3 + 2 epochs on a short
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


def one(args, ds, base_cfg, variant, seed):
    """Trains and evaluates one (dataset, variant, seed); returns the eval JSON."""
    d = os.path.join(args.out, ds)
    tag = "%s-s%d" % (variant, seed)
    js = os.path.join(d, tag + ".json")
    if os.path.exists(js):
        with open(js) as f:
            return json.load(f), 0.0
    cfg = os.path.join(d, tag + ".ini")
    model = os.path.join(d, tag + ".model")
    log = os.path.join(d, tag + ".log")
    write_config(base_cfg, cfg, variant, args.quick)
    fl = os.path.join(args.build, "tools", "faultline")
    t0 = time.monotonic()
    run([fl, "train", "--config", cfg, "--data", os.path.join(d, "train.csv"),
         "--out", model, "--seed", str(seed), "--quiet"], log)
    took = time.monotonic() - t0
    run([fl, "eval", "--model", model, "--config", cfg, "--data",
         os.path.join(d, "held.csv"), "--seed", "1", "--json", js + ".tmp"], log)
    os.rename(js + ".tmp", js)
    with open(js) as f:
        return json.load(f), took


def fmt(vals, digits=3):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return "%.*f" % (digits, med)
    return "%.*f (%.*f-%.*f)" % (digits, med, digits, min(vals), digits, max(vals))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "ablation"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--datasets", default="sim,skab")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sim-rows", type=int, default=8000)
    ap.add_argument("--skab", default=SKAB_AF, help="SKAB's anomaly-free.csv")
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
    for ds in datasets:
        d = os.path.join(args.out, ds)
        os.makedirs(d, exist_ok=True)
        if ds == "sim":
            base = os.path.join(ROOT, "config", "plant.ini")
            src = os.path.join(d, "plant.csv")
            if not os.path.exists(src):
                run([fl, "simulate", "--rows", str(args.sim_rows), "--seed", "1",
                     "--out", src], os.path.join(d, "simulate.log"))
        elif ds == "skab":
            base = os.path.join(ROOT, "config", "skab-sensors.ini")
            src = args.skab
            if not os.path.exists(src):
                print("ablation: %s is absent; SKAB skipped" % src)
                continue
        else:
            sys.exit("ablation: unknown dataset %r (sim, skab)" % ds)
        split(src, os.path.join(d, "train.csv"), os.path.join(d, "held.csv"))
        for v in variants:
            for s in seeds:
                print("ablation: %s %s seed %d ..." % (ds, v, s), end=" ", flush=True)
                r, took = one(args, ds, base, v, s)
                results[(ds, v, s)] = r
                print("AUROC %.3f, %s" % (r["overall"]["auroc"],
                                          "%.0f s" % took if took else "cached"))

    cols = ["AUROC", "loc", "clean FAR", "RMSE corrected", "RMSE estimate",
            "RMSE stage-1", "RMSE input"]
    for ds in datasets:
        rows = [(v, [results[(ds, v, s)] for s in seeds if (ds, v, s) in results])
                for v in variants]
        if not any(rs for _, rs in rows):
            continue
        print("\n%s (median over training seeds %s, range in brackets; eval seed 1)"
              % (ds, ",".join(map(str, seeds))))
        print("| variant | " + " | ".join(cols) + " |")
        print("| --- " * (len(cols) + 1) + "|")
        for v, rs in rows:
            o = [r["overall"] for r in rs]
            vals = [
                fmt([x["auroc"] for x in o]),
                fmt([x["localisation"] for x in o], 2),
                fmt([r["clean"]["far"] for r in rs]),
                fmt([x["rmse"]["corrected"] for x in o], 2),
                fmt([x["rmse"]["estimate"] for x in o], 2),
                fmt([x["rmse"]["stage1"] for x in o], 2),
                fmt([x["rmse"]["input"] for x in o], 2),
            ]
            print("| %s | %s |" % (v, " | ".join(vals)))


if __name__ == "__main__":
    main()
