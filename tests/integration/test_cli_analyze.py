#!/usr/bin/python3
"""Process test of `faultline analyze`.

Simulates a short clean run of the plant, trains a quick model on it with
config/plant.ini (few epochs), then runs analyze without and with --data,
with --json and --plot, and checks: the JSON parses and holds every layer
(norm within its target, since training projects), the path bounds are the
products the text states, every modality and path has a verdict that agrees
with its largest gain, no gain exceeds its bound, statistics are ordered,
the heatmap has one row per channel and one column per position; the SVG
parses as XML with one cell per channel, position, fault kind and path; the
text names every modality, states how the L2 normalisation is bounded and
gives the verdicts; the fixed operating points are reproducible; bad input
fails clearly.

usage: test_cli_analyze.py FAULTLINE   (run from the project's source root)
"""
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checks import check, finish  # noqa: E402

FL = os.path.abspath(sys.argv[1])
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODALITIES = {"vibration": 2, "electrical": 2, "hydraulic": 2, "thermal": 2}
PATHS = ["latent", "detection", "correction"]


def run(*args, ok=True):
    p = subprocess.run([FL, *args], capture_output=True, text=True)
    if ok and p.returncode != 0:
        sys.exit(f"faultline {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def close(a, b, rel=1e-4):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def check_json(d, npos, tag):
    layers = d["layers"]
    check(len(layers) == 4 * len(MODALITIES) + 5, f"{tag}: {len(layers)} layers")
    for l in layers:
        check(l["norm"] > 0, f"{tag}: {l['name']} norm {l['norm']}")
        if l["target"] is not None:
            check(l["norm"] <= l["target"] * 1.001, f"{tag}: {l['name']} above its target")
        want = {"encoder": ["detection", "correction"], "head": ["detection"],
                "block": ["correction"], "decoder": ["correction"]}[l["module"]]
        check(l["paths"] == want, f"{tag}: {l['name']} paths {l['paths']}")
    b = d["bounds"]
    check(b["block"] >= 1.0, f"{tag}: block bound {b['block']} < 1 (residual)")
    for name, bm in b["modalities"].items():
        check(close(bm["latent"], bm["encoder"]), f"{tag}: {name} latent bound")
        check(close(bm["detection"], bm["encoder"] * b["head"]), f"{tag}: {name} detection bound")
        check(close(bm["correction"], bm["encoder"] * b["block"] * b["decoders"]),
              f"{tag}: {name} correction bound")
    check(set(d["measurements"]) == set(MODALITIES), f"{tag}: modalities {list(d['measurements'])}")
    for name, mm in d["measurements"].items():
        for p in PATHS:
            r = mm[p]
            a = r["all"]
            check(r["verdict"] in ("amplifies", "attenuates"), f"{tag}: {name}/{p} verdict")
            check((r["verdict"] == "amplifies") == (a["max"] > 1.0),
                  f"{tag}: {name}/{p} verdict {r['verdict']} vs max {a['max']}")
            check(a["max"] <= r["bound"] * 1.001, f"{tag}: {name}/{p} max {a['max']} > bound {r['bound']}")
            check(close(r["bound"], b["modalities"][name][p]), f"{tag}: {name}/{p} bound differs")
            check(0 < a["min"] <= a["median"] <= a["max"], f"{tag}: {name}/{p} stats {a}")
            for k in ("impulse", "step"):
                check(r[k]["verdict"] in ("amplifies", "attenuates"), f"{tag}: {name}/{p}/{k}")
                check(r[k]["max"] <= a["max"] + 1e-9, f"{tag}: {name}/{p}/{k} max")
            for k in ("impulse", "step"):
                grid = d["heatmap"][name][p][k]
                check(len(grid) == MODALITIES[name] and all(len(row) == npos for row in grid),
                      f"{tag}: {name}/{p}/{k} heatmap shape")
        check(len(d["heatmap"][name]["positions"]) == npos, f"{tag}: {name} positions")
    check(d["positions_per_channel"] == npos, f"{tag}: positions_per_channel")


def check_svg(path, npos, tag):
    root = ET.parse(path).getroot()
    check(root.tag.endswith("svg"), f"{tag}: root is {root.tag}")
    cells = [r for r in root.iter("{http://www.w3.org/2000/svg}rect")
             if r.find("{http://www.w3.org/2000/svg}title") is not None]
    want = sum(MODALITIES.values()) * npos * 2 * len(PATHS)
    check(len(cells) == want, f"{tag}: {len(cells)} heatmap cells, want {want}")
    check(all(c.get("fill", "").startswith("#") for c in cells), f"{tag}: cell fills")


def main():
    tmp = tempfile.mkdtemp(prefix="faultline-analyze-")
    P = lambda name: os.path.join(tmp, name)
    run("simulate", "--rows", "1500", "--seed", "3", "--out", P("sim.csv"))
    with open(os.path.join(ROOT, "config", "plant.ini")) as f:
        ini = f.read()
    with open(P("fast.ini"), "w") as f:
        f.write(ini + "\n[train]\nepochs1 = 3\nepochs2 = 2\n")
    run("train", "--config", P("fast.ini"), "--data", P("sim.csv"), "--out", P("m.model"),
        "--quiet")

    # Fixed operating points, 8 positions.
    p = run("analyze", "--model", P("m.model"), "--json", P("a.json"), "--plot", P("a.svg"))
    out = p.stdout
    for name in MODALITIES:
        check(name in out, f"text lacks modality {name}")
    check("verdicts" in out and ("amplifies" in out or "attenuates" in out), "text lacks verdicts")
    check("not globally Lipschitz" in out and "before normalisation" in out,
          "text does not say how the L2 normalisation is bounded")
    check("1 + prod(block)" in out, "text does not state the residual block's bound")
    check("ABOVE BOUND" not in out, "a measurement is above its bound")
    check("training mean" in out, "text does not name the fixed operating points")
    with open(P("a.json")) as f:
        d = json.load(f)
    check_json(d, 8, "fixed")
    check(d["operating_points"]["source"] == "fixed", "source is not fixed")
    check_svg(P("a.svg"), 8, "fixed")

    # Reproducible.
    run("analyze", "--model", P("m.model"), "--json", P("b.json"))
    with open(P("b.json")) as f:
        check(json.load(f)["measurements"] == d["measurements"], "fixed run not reproducible")

    # Windows of the data, 5 positions.
    run("analyze", "--model", P("m.model"), "--data", P("sim.csv"), "--positions", "5",
        "--windows", "3", "--json", P("c.json"), "--plot", P("c.svg"))
    with open(P("c.json")) as f:
        d = json.load(f)
    check_json(d, 5, "data")
    check(d["operating_points"]["source"] == "data" and
          len(d["operating_points"]["window_ends"]) == 3, "data operating points")
    check_svg(P("c.svg"), 5, "data")

    # Bad input.
    p = run("analyze", ok=False)
    check(p.returncode != 0 and "--model" in p.stderr, "missing --model accepted")
    with open(P("bad.csv"), "w") as f:
        f.write("x,y\n1,2\n3,4\n")
    p = run("analyze", "--model", P("m.model"), "--data", P("bad.csv"), ok=False)
    check(p.returncode != 0 and "not in the data" in p.stderr,
          f"data without the model's columns: rc {p.returncode} {p.stderr!r}")
    p = run("analyze", "--model", P("nope.model"), ok=False)
    check(p.returncode != 0 and "nope.model" in p.stderr, "missing model file")

    finish()
    print("analyze: all checks passed")


if __name__ == "__main__":
    main()
