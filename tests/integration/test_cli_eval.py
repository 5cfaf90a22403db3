#!/usr/bin/python3
"""Process test of `faultline inject`, `faultline eval` and `faultline calibrate`.

Simulates a short clean run of the plant, trains a quick model on it with
config/plant.ini (fewer epochs), then checks that inject corrupts exactly the
labelled samples, reproducibly, and refuses bad input clearly; that eval's
JSON holds every fault type with numbers in range and leaves clean rows
untouched; and that eval's numbers for one type agree with the same
injection redone by `faultline inject`, scored by `faultline score` and
measured here independently (mid-rank AUROC, F1, false alarms, RMSE).

usage: test_cli_eval.py FAULTLINE   (run from the project's source root)
"""
import csv
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checks import check, finish  # noqa: E402

FL = os.path.abspath(sys.argv[1])
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TYPES = ["noise", "burst", "spike", "step", "offset", "drift", "drift_exp", "sine",
         "dropout", "missing", "stuck", "saturation", "gain", "timeshift"]
CHANNELS = ["vib_de", "vib_nde", "current", "voltage", "pressure", "flow", "temp_motor",
            "temp_fluid"]


def run(*args, ok=True):
    p = subprocess.run([FL, *args], capture_output=True, text=True)
    if ok and p.returncode != 0:
        sys.exit(f"faultline {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def num(s):
    return math.nan if s in ("", "NaN", "nan") else float(s)


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def channel_of(col):
    """The model channel a data column belongs to (vib_de.3 -> vib_de)."""
    base = col.split(".")[0]
    return base if base in CHANNELS else None


def model_std(path):
    """norm.std of a model file, read straight from the safetensors layout."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        t = header["norm.std"]
        assert t["dtype"] == "F32"
        a, b = t["data_offsets"]
        f.seek(8 + n + a)
        return list(struct.unpack(f"<{(b - a) // 4}f", f.read(b - a)))


def check_model_file(path):
    """A trained model read as any safetensors reader would, with numpy:
    PyTorch's names and shapes for the plant's layout, the normalisation and
    calibration tensors, and the architecture in the metadata."""
    import numpy as np
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__")
    spec = json.loads(meta["faultline.spec"])
    check(meta.get("faultline.format") == "faultline-model-1", "model format metadata")
    check([m["name"] for m in spec["modalities"]] ==
          ["vibration", "electrical", "hydraulic", "thermal"], "model spec modalities")
    z = 4 * spec["enc2"] * spec["window"] // 4
    expect = {
        "enc.vibration.0.weight": [16, 2, 30],   # rate 10: 3r taps
        "enc.electrical.0.weight": [16, 2, 5],
        "enc.hydraulic.1.weight": [32, 16, 5],
        "dec.thermal.0.weight": [32, 16, 5],     # ConvTranspose1d: (in, out, k)
        "dec.vibration.1.weight": [16, 2, 30],
        "block.0.weight": [256, z], "block.2.weight": [z, 256], "block.2.bias": [z],
        "head.0.weight": [128, z], "head.1.weight": [32, 128],
        "norm.mean": [8], "norm.std": [8], "calib.res_mu": [8], "calib.centroid": [32],
    }
    for name, shape in expect.items():
        check(name in header and header[name]["shape"] == shape,
              f"model tensor {name} has shape {header.get(name, {}).get('shape')}, want {shape}")
    end = 0
    for name, t in header.items():
        a, b = t["data_offsets"]
        x = np.frombuffer(blob[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"])
        check(t["dtype"] == "F32" and np.all(np.isfinite(x)), f"model tensor {name} finite F32")
        end = max(end, b)
    check(8 + n + end == len(blob), "model file has no trailing bytes")
    std = np.frombuffer(blob[8 + n + header["norm.std"]["data_offsets"][0]:][:32], dtype="<f4")
    check(bool(np.all(std > 0)), "norm.std positive")


def auroc(scores, labels):
    """Mann-Whitney with mid-ranks, written independently of lib/metrics.c."""
    pairs = sorted(zip(scores, labels))
    rank_pos, i, npos = 0.0, 0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        pos = sum(1 for k in range(i, j) if pairs[k][1])
        rank_pos += pos * (i + 1 + j) / 2.0
        npos += pos
        i = j
    nneg = len(pairs) - npos
    return (rank_pos - npos * (npos + 1) / 2.0) / (npos * nneg)


def in_unit(v):
    return isinstance(v, (int, float)) and 0.0 <= v <= 1.0


def main():
    tmp = tempfile.mkdtemp(prefix="faultline-eval-")
    P = lambda name: os.path.join(tmp, name)

    # A short clean run and a quick model.  The held-out file is the end of
    # the training run (the part the trainer held out for calibration), so
    # that a model trained for seconds still knows its operating points.
    run("simulate", "--rows", "3000", "--seed", "7", "--out", P("sim.csv"))
    with open(os.path.join(ROOT, "config", "plant.ini")) as f:
        ini = f.read()
    with open(P("fast.ini"), "w") as f:
        f.write(ini + "\n[train]\nepochs1 = 8\nepochs2 = 4\n")
    run("train", "--config", P("fast.ini"), "--data", P("sim.csv"), "--out", P("m.model"),
        "--quiet")
    check_model_file(P("m.model"))
    header, rows = read_csv(P("sim.csv"))
    with open(P("held.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows[-600:])

    # ---- inject with the plant's layout ----------------------------------
    inj = ["inject", "--in", P("held.csv"), "--config", P("fast.ini"), "--seed", "5",
           "--count", "14", "--from", "60"]
    run(*inj, "--out", P("inj.csv"), "--labels", P("lab.csv"))
    h0, clean = read_csv(P("held.csv"))
    h1, bad = read_csv(P("inj.csv"))
    hl, lab = read_csv(P("lab.csv"))
    chan_cols = [c for c in h0 if channel_of(c)]
    check(h1 == h0, "inject keeps the columns")
    check(len(bad) == len(clean) == len(lab) == 600, "one output and label row per input row")
    check(hl == ["datetime", "fault", "fault_name", "modality"] +
          [c + "_label" for c in chan_cols], f"label columns: {hl[:6]}...")
    check(len(chan_cols) == 26, "26 channel columns")
    changed = labelled = changed_unlabelled = 0
    names_seen = set()
    for r in range(len(clean)):
        check(bad[r][0] == clean[r][0] == lab[r][0], f"row {r}: datetime kept")
        fault, name, mod = int(lab[r][1]), lab[r][2], int(lab[r][3])
        flags = [int(v) for v in lab[r][4:]]
        check(set(flags) <= {0, 1}, f"row {r}: labels are 0/1")
        check((fault > 0) == any(flags), f"row {r}: fault id iff a channel is labelled")
        check(name == (TYPES[fault - 1] if fault else "none"), f"row {r}: fault_name {name}")
        check((mod == -1) == (fault == 0) and -1 <= mod < 4, f"row {r}: modality {mod}")
        if fault:
            names_seen.add(name)
            check(r >= 60, f"row {r}: fault before --from")
        for j, col in enumerate(h0):
            if col == "datetime":
                continue
            a, b = num(clean[r][j]), num(bad[r][j])
            if not channel_of(col):
                check(same(a, b), f"row {r}: non-channel column {col} changed")
                continue
            lab_j = flags[chan_cols.index(col)]
            labelled += lab_j
            if not same(a, b):
                changed += 1
                if not lab_j:
                    changed_unlabelled += 1
    check(changed_unlabelled == 0, f"{changed_unlabelled} samples changed without a label")
    check(changed > 100 and labelled >= changed, f"faults changed data ({changed} samples)")
    check(len(names_seen) >= 12, f"14 episodes cycle the fault types: saw {sorted(names_seen)}")

    # Reproducible, and the seed matters.
    run(*inj, "--out", P("inj2.csv"), "--labels", P("lab2.csv"))
    check(open(P("inj.csv")).read() == open(P("inj2.csv")).read() and
          open(P("lab.csv")).read() == open(P("lab2.csv")).read(), "same seed, same files")
    inj[inj.index("--seed") + 1] = "6"
    run(*inj, "--out", P("inj3.csv"), "--labels", P("lab3.csv"))
    check(open(P("lab.csv")).read() != open(P("lab3.csv")).read(), "another seed, other faults")

    # ---- inject without a config: every column its own channel ------------
    with open(P("small.csv"), "w") as f:
        f.write("datetime,a,b,anomaly\n")
        for r in range(200):
            f.write(f"2026-01-01T00:{r // 60:02d}:{r % 60:02d},{math.sin(r / 7):.6f},"
                    f"{10 + math.cos(r / 5):.6f},0\n")
    run("inject", "--in", P("small.csv"), "--out", P("small_inj.csv"), "--labels",
        P("small_lab.csv"), "--fault", "missing", "--count", "3")
    hs, srows = read_csv(P("small_inj.csv"))
    hsl, slab = read_csv(P("small_lab.csv"))
    check(hsl == ["datetime", "fault", "fault_name", "modality", "a_label", "b_label"],
          f"default layout labels: {hsl}")
    nan_cells = sum(1 for row in srows for v in row[1:3] if v == "")
    lab_cells = sum(int(v) for row in slab for v in row[4:])
    check(nan_cells == lab_cells > 0, f"missing: {nan_cells} empty cells, {lab_cells} labels")
    check(all(row[3] == "0" for row in srows), "anomaly column untouched")
    check(all(row[2] in ("none", "missing") for row in slab), "only the requested type")

    # ---- bad input --------------------------------------------------------
    p = run("inject", "--in", P("small.csv"), "--out", P("x.csv"), "--labels", P("y.csv"),
            "--fault", "gremlins", ok=False)
    check(p.returncode == 1 and "gremlins" in p.stderr and "valid types" in p.stderr and
          "timeshift" in p.stderr, f"unknown fault type: {p.stderr.strip()}")
    p = run("inject", "--in", P("small.csv"), "--out", P("x.csv"), "--labels", P("y.csv"),
            "--count", "50", ok=False)
    check(p.returncode == 1 and "at most" in p.stderr, f"too many episodes: {p.stderr.strip()}")
    p = run("inject", "--in", P("small.csv"), "--out", P("x.csv"), "--labels", P("y.csv"),
            "--config", P("fast.ini"), ok=False)
    check(p.returncode == 1 and "vib_de.0" in p.stderr, f"missing column: {p.stderr.strip()}")
    p = run("inject", "--in", P("nonexistent.csv"), "--out", P("x.csv"), "--labels",
            P("y.csv"), ok=False)
    check(p.returncode == 1 and "nonexistent.csv" in p.stderr, "unreadable input named")
    p = run("eval", "--model", P("m.model"), "--data", P("held.csv"), "--episodes", "100",
            ok=False)
    check(p.returncode == 1 and "at most" in p.stderr, f"eval, too many: {p.stderr.strip()}")
    check(not os.path.exists(P("x.csv")), "nothing written on error")

    # ---- eval -------------------------------------------------------------
    p = run("eval", "--model", P("m.model"), "--data", P("held.csv"), "--config",
            P("fast.ini"), "--episodes", "6", "--json", P("ev.json"), "--memory", P("sim.csv"))
    lines = p.stdout.splitlines()
    for t in TYPES + ["clean", "overall"]:
        check(any(l.split()[:1] == [t] for l in lines), f"table has a row for {t}")
    ev = json.load(open(P("ev.json")))
    check(sorted(ev["faults"]) == sorted(TYPES), f"every fault type: {sorted(ev['faults'])}")
    check(in_unit(ev["clean"]["far"]), "clean-run FAR in [0, 1]")
    check(ev["clean"]["rmse"]["clean"] < 0.1,
          f"gating leaves a clean run untouched: {ev['clean']['rmse']['clean']}")
    for t, r in list(ev["faults"].items()) + [("overall", ev["overall"])]:
        for k in ("auroc", "f1", "far", "far_settled", "precision", "recall"):
            check(r[k] is None or in_unit(r[k]), f"{t}: {k} = {r[k]}")
        check(in_unit(r["auroc"]), f"{t}: AUROC defined")
        check(in_unit(r["far"]), f"{t}: FAR defined")
        check(0 < r["episodes"] <= (6 if t != "overall" else 84), f"{t}: {r['episodes']} episodes")
        check(0 <= r["detected"] <= r["episodes"], f"{t}: detected")
        check(r["localisation"] is None if r["detected"] == 0 else in_unit(r["localisation"]),
              f"{t}: localisation {r['localisation']}")
        for k, v in r["rmse"].items():
            ok = v is None if (t == "missing" and k == "input") else \
                (isinstance(v, (int, float)) and v >= 0)
            check(ok, f"{t}: rmse.{k} = {v}")
        check(r["rmse"]["clean_settled"] is None or r["rmse"]["clean_settled"] < 0.1,
              f"{t}: corrected == input on settled clean rows: {r['rmse']['clean_settled']}")
        check(r["rows_faulty"] > 0 and r["rows_clean"] > 0, f"{t}: both classes present")
    # Faults that push samples far away are far from the truth before correction.
    for t in ("spike", "offset", "dropout"):
        check(ev["faults"][t]["rmse"]["input"] > 1.0, f"{t}: input RMSE > 1 sd")

    # ---- eval agrees with inject + score measured here ---------------------
    spike = ev["faults"]["spike"]
    run("inject", "--in", P("held.csv"), "--config", P("fast.ini"), "--fault", "spike",
        "--seed", str(spike["seed"]), "--count", "6", "--from", str(ev["from"]),
        "--out", P("sp.csv"), "--labels", P("sp_lab.csv"))
    run("score", "--model", P("m.model"), "--in", P("sp.csv"), "--out", P("sp_score.csv"))
    hsc, sc = read_csv(P("sp_score.csv"))
    _, splab = read_csv(P("sp_lab.csv"))
    _, spx = read_csv(P("sp.csv"))
    faulty = [int(r[1]) > 0 for r in splab]
    scored = [i for i, r in enumerate(sc) if r[hsc.index("score")] != ""]
    s = [float(sc[i][hsc.index("score")]) for i in scored]
    y = [faulty[i] for i in scored]
    f = [int(sc[i][hsc.index("anomaly")]) for i in scored]
    tp = sum(a and b for a, b in zip(f, y))
    fp = sum(a and not b for a, b in zip(f, y))
    fn = sum((not a) and b for a, b in zip(f, y))
    tn = len(y) - tp - fp - fn
    check(abs(auroc(s, y) - spike["auroc"]) < 1e-5, f"AUROC {auroc(s, y)} vs {spike['auroc']}")
    check(abs(2 * tp / (2 * tp + fp + fn) - spike["f1"]) < 1e-5, "F1 agrees")
    check(abs(fp / (fp + tn) - spike["far"]) < 1e-5, "FAR agrees")
    std = model_std(P("m.model"))
    se = {"input": 0.0, "corrected": 0.0}
    n = 0
    for r in range(len(clean)):
        for j, col in enumerate(h0):
            ch = channel_of(col)
            if not ch or splab[r][4 + chan_cols.index(col)] != "1":
                continue
            sd = std[CHANNELS.index(ch)]
            truth = num(clean[r][j])
            se["input"] += ((num(spx[r][j]) - truth) / sd) ** 2
            se["corrected"] += ((num(sc[r][hsc.index(col + "_corrected")]) - truth) / sd) ** 2
            n += 1
    for k in se:
        mine = math.sqrt(se[k] / n)
        check(abs(mine - spike["rmse"][k]) < 1e-3 * max(1.0, mine),
              f"RMSE {k}: {mine} here vs {spike['rmse'][k]} from eval")
    check(n == spike["samples"]["input"], f"faulted samples {n} vs {spike['samples']['input']}")

    # ---- calibrate: the detector set anew, weights kept --------------------
    def meta_of(path):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            head = json.loads(f.read(n))
            return head, head["__metadata__"]
    with open(P("strict.ini"), "w") as f:
        f.write(ini + "\n[detect]\nquantile = 0.5\n")
    run("calibrate", "--model", P("m.model"), "--config", P("strict.ini"), "--data",
        P("sim.csv"), "--out", P("m2.model"))
    h1, m1 = meta_of(P("m.model"))
    h2, m2 = meta_of(P("m2.model"))
    d1, d2 = json.loads(m1["faultline.detect"]), json.loads(m2["faultline.detect"])
    check(d2["quantile"] == 0.5 and d2["threshold"] < d1["threshold"],
          f"calibrate: quantile 0.5 lowers the threshold ({d1['threshold']} -> {d2['threshold']})")
    lin = json.loads(m2["faultline.lineage"])
    check("recalibrated" in lin and lin.get("calibration_data") == P("sim.csv"),
          f"calibrate: the lineage records it ({lin})")
    with open(P("m.model"), "rb") as f1, open(P("m2.model"), "rb") as f2:
        b1, b2 = f1.read(), f2.read()
    for name, t in h1.items():
        if name == "__metadata__" or name.startswith("calib."):
            continue
        o1, o2 = t["data_offsets"], h2[name]["data_offsets"]
        check(o1[1] - o1[0] == o2[1] - o2[0], f"calibrate: {name} keeps its size")
    import numpy as np
    def tensor(blob, head, name):
        n = struct.unpack("<Q", blob[:8])[0]
        a, b = head[name]["data_offsets"]
        return np.frombuffer(blob[8 + n + a:8 + n + b], dtype="<f4")
    same_w = all(np.array_equal(tensor(b1, h1, k), tensor(b2, h2, k)) for k in h1
                 if k != "__metadata__" and not k.startswith("calib."))
    check(same_w, "calibrate: weights and normalisation unchanged")
    # The same settings give the same calibration back.
    run("calibrate", "--model", P("m.model"), "--config", P("fast.ini"), "--data",
        P("sim.csv"), "--out", P("m3.model"))
    d3 = json.loads(meta_of(P("m3.model"))[1]["faultline.detect"])
    check(abs(d3["threshold"] - d1["threshold"]) < 1e-5,
          f"calibrate: the training's settings reproduce its threshold "
          f"({d1['threshold']} vs {d3['threshold']})")
    # A config of another plant is refused, with the reason.
    with open(P("other.ini"), "w") as f:
        f.write("[modality.x]\nrate = 1\nchannels = current\n")
    p = run("calibrate", "--model", P("m.model"), "--config", P("other.ini"), "--data",
            P("sim.csv"), "--out", P("m4.model"), ok=False)
    check(p.returncode == 1 and "does not describe" in p.stderr and
          not os.path.exists(P("m4.model")), f"calibrate: foreign config refused ({p.stderr})")
    p = run("calibrate", "--model", P("m.model"), ok=False)
    check(p.returncode != 0 and "required" in p.stderr, "calibrate: missing --data/--out")

    finish()
    print("ok")


if __name__ == "__main__":
    main()
