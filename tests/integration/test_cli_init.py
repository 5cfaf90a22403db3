#!/usr/bin/python3
"""Process test of `faultline init` and of training without a config.

On three plants -- SKAB's first 400 rows of valve1/1 (skipped when the data
is not there), a wide simulated plant (`simulate --units 4`: 32 sensors in
104 columns) and a 52-column file (`simulate --units 2`) -- init writes a
config that: lists every sensor exactly once, each modality under a comment
that says why it was formed, at most 8 sensors of one rate per modality,
at most 8 modalities besides the drifting ones paired by their changes; is
the same when run again; and that `faultline train --config` accepts
unchanged.  Training without any config on the 52-column file works and
gives the model the same modalities (faultline inspect).  More than 128
sensors fails with a clear message.

usage: test_cli_init.py FAULTLINE   (run from the project's source root)
"""
import configparser
import csv
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checks import check, finish  # noqa: E402

FL = os.path.abspath(sys.argv[1])
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SKAB = os.environ.get("SKAB_DATA", os.path.join(ROOT, "..", "shared", "data", "skab"))
LABELS = {"anomaly", "anomaly_kind", "anomaly_unit", "changepoint", "datetime"}
ENV = dict(os.environ, FAULTLINE_QUICK="1", OPENBLAS_NUM_THREADS="1")


def run(*args, ok=True):
    p = subprocess.run([FL, *args], capture_output=True, text=True, env=ENV)
    if ok and p.returncode != 0:
        print(p.stdout, p.stderr, file=sys.stderr)
        raise SystemExit("faultline %s failed (%d)" % (args[0], p.returncode))
    return p


def units(tmp, n, rows, name):
    """A simulated plant of n coupled units (columns uNN_<column>)."""
    out = os.path.join(tmp, name)
    run("simulate", "--out", out, "--rows", str(rows), "--seed", "11", "--units", str(n),
        "--anomalies", "0")
    return out


def sensors_of(path):
    with open(path) as f:
        first = f.readline()
    head = next(csv.reader([first], delimiter=";" if ";" in first else ","))
    cols = [c for c in head if c not in LABELS]
    names = set()
    for c in cols:
        base, _, k = c.rpartition(".")
        names.add(base if k.isdigit() and base + ".0" in cols else c)
    return names, len(cols)


def check_config(path, data, tag):
    text = run("init", "--data", data).stdout
    again = run("init", "--data", data, "--out", path)
    check(again.stdout == "", "%s: --out writes nothing to stdout" % tag)
    with open(path) as f:
        check(f.read() == text, "%s: the same config twice and with --out" % tag)
    cp = configparser.ConfigParser(comment_prefixes=(";",), inline_comment_prefixes=None)
    cp.read(path)
    mods = [s for s in cp.sections() if s.startswith("modality.")]
    # Drifting sensors paired by their changes are not merged to fit the cap
    # (8 for these plants); the rest are.
    text_of = dict(re.findall(r"\[(modality\.[^\]]+)\]\n; ([^\n]*)", text))
    capped = [s for s in mods if "changes over" not in text_of.get(s, "")]
    check(1 <= len(mods) and len(capped) <= 8,
          "%s: 1 to 8 modalities besides those paired by changes, not %d" % (tag, len(capped)))
    listed = []
    for s in mods:
        ch = [c.strip() for c in cp[s]["channels"].split(",")]
        check(1 <= len(ch) <= 8, "%s: %s holds 1 to 8 sensors" % (tag, s))
        listed += ch
        check(int(cp[s]["rate"]) >= 1, "%s: %s has a rate" % (tag, s))
    want, _ = sensors_of(data)
    check(sorted(listed) == sorted(want), "%s: every sensor exactly once" % tag)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("[modality."):
            check(lines[i + 1].startswith("; "), "%s: %s says why" % (tag, line))
    check(cp.has_option("model", "window"), "%s: a window" % tag)
    model = os.path.join(os.path.dirname(path), tag + ".model")
    p = run("train", "--config", path, "--data", data, "--out", model, "--quiet", ok=False)
    check(p.returncode == 0, "%s: train accepts the config unchanged: %s" % (tag, p.stderr))
    return text, model


def modality_lines(model):
    out = run("inspect", model).stdout
    return [l for l in out.splitlines() if l.startswith(("modalities", "window"))]


with tempfile.TemporaryDirectory() as tmp:
    skab = os.path.join(SKAB, "valve1", "1.csv")
    if os.path.exists(skab):
        part = os.path.join(tmp, "skab.csv")
        with open(skab) as f, open(part, "w") as g:
            for i, line in enumerate(f):
                if i > 400:
                    break
                g.write(line)
        text, _ = check_config(os.path.join(tmp, "skab.ini"), part, "skab")
        check("drifts = 1" in text and "[modality.drift]" in text,
              "skab: the temperatures drift, in a modality named so")
    else:
        print("SKAB data not found at %s: its part skipped" % SKAB)

    wide = units(tmp, 4, 700, "wide.csv")
    names, ncol = sensors_of(wide)
    check(len(names) == 32 and ncol == 104, "wide: 32 sensors in 104 columns")
    check_config(os.path.join(tmp, "wide.ini"), wide, "wide")

    f52 = units(tmp, 2, 700, "f52.csv")
    names, ncol = sensors_of(f52)
    check(ncol == 52, "52 columns, not %d" % ncol)
    _, model = check_config(os.path.join(tmp, "f52.ini"), f52, "f52")
    # Without any config: the same modalities as init's config.
    bare = os.path.join(tmp, "f52-bare.model")
    run("train", "--data", f52, "--out", bare, "--quiet")
    check(modality_lines(bare) == modality_lines(model) and modality_lines(bare),
          "f52: train without a config chose init's modalities")

    # More sensors than the 128 the model once held: every one is placed.
    big = os.path.join(tmp, "big.csv")
    with open(big, "w") as f:
        f.write(",".join("s%d" % j for j in range(130)) + "\n")
        for r in range(50):
            f.write(",".join(str((r * 7 + j * 13) % 17) for j in range(130)) + "\n")
    big_ini = os.path.join(tmp, "big.ini")
    p = run("init", "--data", big, "--out", big_ini)
    with open(big_ini) as f:
        listed = [c.strip() for line in f if line.startswith("channels")
                  for c in line.split("=", 1)[1].split(",")]
    check(sorted(listed) == sorted("s%d" % j for j in range(130)),
          "130 sensors: init places each once, got %d" % len(listed))

finish()
print("ok")
