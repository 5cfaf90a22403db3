#!/usr/bin/python3
"""Leave-files-out choice of the re-anchoring constant ([detect] settle) on SKAB valve1.

The 16 valve1 files are split into two folds, A (0-7) and B (8-15).  For each
candidate value of settle, each fold is run through SKAB's protocol with the
runner ../shared/tools/skab_run.py (first 400 rows train, the rest test).  The
value used on a fold is the one chosen on the other fold alone: the highest F1
among the candidates whose false-alarm rate there is at most --far-cap (the
lowest false-alarm rate when none is); among equal scores, the smallest value
that is not 0.  Equal scores mean that the rule did not fire on those files,
which cannot tell how soon it should; it is there for the recordings that
settle at a new normal, so it is kept on and as prompt as the files allow.  The held-out score pools both folds,
each scored with the value the other chose (SKAB's binary metric: confusion
counts summed over the files, then the ratios).

With --config INI the detector is `faultline detect --config INI` with
`settle = S` appended to the config's last section, [detect].  Without it, no
configuration is written by hand: `faultline init` chooses one from each
file's training part (what `detect` without --config chooses) and
`settle = S` is appended in a [detect] section of its own.

With --drift-se K1,K2,.. (no configuration only) the margin of `faultline
init --drift-se` (how many standard errors of doubt about a sensor's slow
share go to drift) is chosen the same way, jointly with settle: every pair is
run, and on equal scores the smaller margin is taken.

Each (candidate, fold) run is kept as WORK/<mode>-s<S>[-k<K>]-<fold>.json and
not run again while it is there.

usage: skab_lofo.py [--config INI] [--candidates 0,60,180,360] [--drift-se K,..]
                    [--work DIR] [--jobs N] [--far-cap 10]   (from the source root)
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.path.join(ROOT, "..", "shared", "tools")
sys.path.insert(0, TOOLS)
sys.dont_write_bytecode = True
import skab_metrics as M  # noqa: E402

FOLDS = {"A": ["valve1/%d" % i for i in range(0, 8)],
         "B": ["valve1/%d" % i for i in range(8, 16)]}
FL = "build/tools/faultline"


def command(config, settle, work, k=None):
    if config:
        ini = os.path.join(work, "config-s%d.ini" % settle)
        with open(config) as f, open(ini, "w") as g:
            text = f.read()
            g.write(text + ("" if text.endswith("\n") else "\n") + "settle = %d\n" % settle)
        return "%s detect --config %s --train {train} --test {test} --out {out}" % (
            FL, shlex.quote(ini))
    opt = "" if k is None else " --drift-se %g" % k
    return ("%s init --data {train} --out {dir}/init.ini%s && "
            "printf '\\n[detect]\\nsettle = %d\\n' >> {dir}/init.ini && "
            "%s detect --config {dir}/init.ini --train {train} --test {test} --out {out}"
            % (FL, opt, settle, FL))


def run(mode, config, cand, fold, args):
    settle, k = cand
    tag = "" if k is None else "-k%g" % k
    out = os.path.join(args.work, "%s-s%d%s-%s.json" % (mode, settle, tag, fold))
    if not os.path.exists(out):
        cmd = [sys.executable, os.path.join(TOOLS, "skab_run.py"), "--jobs", str(args.jobs),
               "--subset", ",".join(FOLDS[fold]), "--no-json", "--json-out", out,
               "--cmd", command(config, settle, args.work, k)]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stdout + p.stderr)
            raise SystemExit("skab_run.py failed on fold %s, %s" % (fold, name(cand)))
    with open(out) as f:
        return json.load(f)


def name(cand):
    settle, k = cand
    return "settle %d" % settle + ("" if k is None else ", drift-se %g" % k)


def counts(report):
    t = [0, 0, 0, 0]
    for r in report["per_file"]:
        for k, key in enumerate(("tp", "tn", "fp", "fn")):
            t[k] += r[key]
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--candidates", default="0,60,180,360")
    ap.add_argument("--work", default="skab-lofo")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--far-cap", type=float, default=10.0)
    ap.add_argument("--drift-se", help="candidate margins of faultline init --drift-se")
    args = ap.parse_args()
    if args.drift_se and args.config:
        ap.error("--drift-se is for the runs without a configuration")
    os.makedirs(args.work, exist_ok=True)
    args.work = os.path.abspath(args.work)
    mode = "ini" if args.config else "bare"
    config = os.path.abspath(args.config) if args.config else None
    ks = [float(k) for k in args.drift_se.split(",")] if args.drift_se else [None]
    cands = [(int(c), k) for c in args.candidates.split(",") for k in ks]
    res = {(c, f): run(mode, config, c, f, args) for c in cands for f in FOLDS}

    print("settle drift-se  fold   F1  FAR%  MAR%")
    for c in cands:
        for f in FOLDS:
            g = res[(c, f)]["groups"]["all"]
            print("%6d %8s  %4s %4.2f %5.2f %5.2f" % (c[0], "-" if c[1] is None else "%g" % c[1],
                                                     f, g["f1"], g["far"], g["mar"]))

    def choose(fold):
        rows = [(res[(c, fold)]["groups"]["all"], c) for c in cands]
        ok = [(g["f1_raw"], -g["far_raw"], c[0] > 0, -c[0], -(c[1] or 0), c) for g, c in rows
              if g["far_raw"] <= args.far_cap]
        if ok:
            return max(ok)[-1]
        return min((g["far_raw"], -g["f1_raw"], c[0] == 0, c[0], c[1] or 0, c)
                   for g, c in rows)[-1]

    total = [0, 0, 0, 0]
    print("\nheld-out fold  chosen on the other fold              F1  FAR%  MAR%")
    for f, other in (("A", "B"), ("B", "A")):
        c = choose(other)
        g = res[(c, f)]["groups"]["all"]
        print("%13s  %-34s %4.2f %5.2f %5.2f" % (f, name(c), g["f1"], g["far"], g["mar"]))
        total = [a + b for a, b in zip(total, counts(res[(c, f)]))]
    b = M.binary_from_counts(*total)
    print("%13s  %-34s %4.2f %5.2f %5.2f" % ("A+B pooled", "-", b["f1"], b["far"], b["mar"]))


if __name__ == "__main__":
    main()
