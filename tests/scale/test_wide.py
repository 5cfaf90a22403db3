#!/usr/bin/python3
"""1,000 channels end to end: init, train, score, analyze and a real faultlined.

usage: test_wide.py FAULTLINE FAULTLINED

A synthetic plant of 1,000 rate-1 sensors in 125 groups of 8 (each group one
latent process seen through gains, offsets and noise), written by this test:
- `faultline init` groups every sensor into more modalities than a plant's
  (every one of the 1,000 columns in exactly one modality);
- `faultline train` with a tiny schedule and model (the test's [model] and
  [train] keys: width, not accuracy, is under test);
- `faultline score`: the score, the flag and the corrected value and its
  uncertainty for every one of the 1,000 channels on every row;
- `faultline analyze`: bounds for every modality;
- faultlined serving the model: frames of all 1,000 channels over ZeroMQ, one
  report per window naming all 125 modalities with per-channel residuals,
  scores and corrected samples, scores and flags as `faultline score` writes
  them for the same rows; noise injected into one channel of the last
  modality is flagged in that modality; SIGHUP reloads and the stream goes on;
- bad input gets the error it gets at a plant's width (a model of the built-in
  plant trained here for the comparison): a CSV row with fewer fields, a CSV
  with more channels than the model (the extra column is ignored, as it is at
  a plant's width), a frame with another channel count for a modality
  (rejected and counted as channel_count, later frames served).
"""
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

FL, FLD = map(os.path.abspath, sys.argv[1:3])
TMP = tempfile.mkdtemp(prefix="fl-wide-")
NCH, PER = 1000, 8
TRAIN_ROWS, STREAM_ROWS = 1100, 300
STRIDE = 1  # every window reported: the daemon's hysteresis and baselines see what score's do
FAULT_AT = 200  # stream row from which one channel of the last modality is noise


# A command's limit guards against a hang; under the sanitizers (tests/run.sh
# sets FAULTLINE_SANITIZED) code runs 2-4x slower, so it is tripled as
# meson's own limit is.
SLOW = 3 if os.environ.get("FAULTLINE_SANITIZED") else 1


def run(args, ok=True, timeout=600):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout * SLOW)
    if ok and p.returncode != 0:
        print(" ".join(args), "->", p.returncode, p.stderr, file=sys.stderr)
        check(False, f"{os.path.basename(args[0])} {args[1]} exits 0")
        T.finish("wide_1000")
    return p


def generate(path, rows):
    """NCH columns g<group>_s<k>: a group's latent (an AR(1) process plus a
    slow sine) times a gain plus an offset, plus independent noise."""
    rng = random.Random(7)
    ng = NCH // PER
    lat = [0.0] * ng
    ph = [rng.uniform(0, 2 * math.pi) for _ in range(ng)]
    period = [rng.uniform(60, 400) for _ in range(ng)]
    gain = [rng.uniform(0.5, 2.0) * rng.choice((-1, 1)) for _ in range(NCH)]
    off = [rng.uniform(-5, 5) for _ in range(NCH)]
    names = [f"g{c // PER:03d}_s{c % PER}" for c in range(NCH)]
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for t in range(rows):
            for g in range(ng):
                lat[g] = 0.95 * lat[g] + rng.gauss(0, 0.3)
            sig = [lat[g] + 2 * math.sin(2 * math.pi * t / period[g] + ph[g]) for g in range(ng)]
            f.write(",".join(f"{off[c] + gain[c] * sig[c // PER] + rng.gauss(0, 0.1):.4f}"
                             for c in range(NCH)) + "\n")
    return names


def split(path, first, rest, n):
    with open(path) as f:
        lines = f.readlines()
    with open(first, "w") as f:
        f.writelines(lines[:1 + n])
    with open(rest, "w") as f:
        f.writelines(lines[:1] + lines[1 + n:])


def same_error(a, path_a, b, path_b):
    """Do two messages agree but for the file's name and the numbers in them?"""
    def mask(s, path):
        return re.sub(r"\d+", "N", s.strip().replace(path, "CSV"))
    return mask(a, path_a) == mask(b, path_b)


def main():
    full = os.path.join(TMP, "wide_all.csv")
    names = generate(full, TRAIN_ROWS + STREAM_ROWS)
    train_csv, stream_csv = os.path.join(TMP, "wide_train.csv"), os.path.join(TMP, "wide.csv")
    split(full, train_csv, stream_csv, TRAIN_ROWS)

    # ---- init -----------------------------------------------------------
    ini = os.path.join(TMP, "wide_init.ini")
    run([FL, "init", "--data", train_csv, "--out", ini])
    mods = T.modalities(ini)
    chans = [c for _, _, cs in mods for c in cs]
    check(sorted(chans) == sorted(names) and len(chans) == NCH,
          f"init: every one of the {NCH} columns in exactly one modality ({len(chans)} placed)")
    check(len(mods) > 16, f"init: {len(mods)} modalities")
    check(all(len(cs) <= 8 for _, _, cs in mods), "init: at most 8 channels per modality")
    # The test's model and schedule: small enough to train in a minute.
    cfg = os.path.join(TMP, "wide.ini")
    T.write_config(cfg, ini, {"model": {"hidden": 32, "enc1": 8, "enc2": 4},
                              "train": {"epochs1": 1, "epochs2": 1, "stride": 10}})

    # ---- train ----------------------------------------------------------
    model = os.path.join(TMP, "wide.model")
    p = run([FL, "train", "--config", cfg, "--data", train_csv, "--out", model])
    check(os.path.getsize(model) > 0 and "wrote" in p.stderr, "train: the model is written")

    # ---- score ----------------------------------------------------------
    scored = os.path.join(TMP, "wide_scored.csv")
    run([FL, "score", "--model", model, "--in", stream_csv, "--out", scored])
    head, rows = T.read_csv(scored)
    want = ["score", "anomaly", "modality"] + [n + "_corrected" for n in names] + \
        [n + "_sd" for n in names]
    check(sorted(head) == sorted(want), f"score: score, flag, modality and every channel's "
          f"corrected value and uncertainty ({len(head)} columns, {len(want)} wanted)")
    check(len(rows) == STREAM_ROWS, f"score: {len(rows)} rows of {STREAM_ROWS}")
    col = {h: i for i, h in enumerate(head)}
    tail = rows[60:]  # rows with a full window
    check(all(math.isfinite(r[col["score"]]) for r in tail), "score: a finite score on every row")
    bad = sum(not math.isfinite(r[col[n + "_corrected"]]) for r in tail for n in names)
    check(bad == 0, f"score: every channel corrected on every row ({bad} not finite)")

    # ---- analyze --------------------------------------------------------
    js = os.path.join(TMP, "wide_analyze.json")
    p = run([FL, "analyze", "--model", model, "--positions", "1", "--windows", "1",
             "--json", js])
    verdicts = [ln for ln in p.stdout.splitlines()
                if "detection:" in ln and "correction:" in ln and "bound" in ln]
    check(len(verdicts) == len(mods),
          f"analyze: a bound per modality for detection and correction ({len(verdicts)} of "
          f"{len(mods)})")
    check(all(ln.split()[0] in {m[0] for m in mods} for ln in verdicts),
          "analyze: the bounds name the modalities")

    # ---- bad CSV input, against a model at the plant's width ------------
    plant_csv = os.path.join(TMP, "plant.csv")
    run([FL, "simulate", "--rows", "600", "--out", plant_csv])
    plant_cfg = os.path.join(TMP, "plant.ini")
    T.write_config(plant_cfg, os.path.join(T.ROOT, "config", "plant.ini"),
                   {"train": {"epochs1": 1, "epochs2": 1, "stride": 10}})
    plant_model = os.path.join(TMP, "plant.model")
    run([FL, "train", "--config", plant_cfg, "--data", plant_csv, "--out", plant_model])

    def variants(src, tag):
        with open(src) as f:
            lines = f.read().splitlines()
        short = os.path.join(TMP, tag + "_short.csv")
        with open(short, "w") as f:
            for i, ln in enumerate(lines[:121]):
                f.write((ln.rsplit(",", 1)[0] if i == 100 else ln) + "\n")
        extra = os.path.join(TMP, tag + "_extra.csv")
        with open(extra, "w") as f:
            for i, ln in enumerate(lines[:121]):
                f.write(ln + (",extra_sensor" if i == 0 else ",1.5") + "\n")
        return short, extra

    for what, (w_in, n_in) in zip(("a row with fewer fields", "more channels than the model"),
                                  zip(variants(stream_csv, "wide"),
                                      variants(plant_csv, "plant"))):
        out_w, out_n = os.path.join(TMP, "bad_w.csv"), os.path.join(TMP, "bad_n.csv")
        pw = run([FL, "score", "--model", model, "--in", w_in, "--out", out_w], ok=False)
        pn = run([FL, "score", "--model", plant_model, "--in", n_in, "--out", out_n], ok=False)
        check(pw.returncode == pn.returncode and
              same_error(pw.stderr, w_in, pn.stderr, n_in),
              f"score, {what}: as at the plant's width (rc {pw.returncode} {pw.stderr.strip()!r}"
              f" against rc {pn.returncode} {pn.stderr.strip()!r})")
        if pw.returncode == 0:
            h, _ = T.read_csv(out_w)
            check("extra_sensor_corrected" not in h and len(h) == len(want),
                  f"score, {what}: the extra column is not in the output")
            check("1 column not in the model, ignored: extra_sensor" in pw.stderr,
                  f"score, {what}: the ignored column is named ({pw.stderr.strip()!r})")
    p = run([FL, "score", "--model", model, "--in", variants(stream_csv, "wide")[0],
             "--out", os.path.join(TMP, "bad_w.csv")], ok=False)
    check(p.returncode == 1 and
          f"expected {NCH} fields as in the header, found {NCH - 1}" in p.stderr,
          f"score: a short row is refused with its line and field counts: {p.stderr.strip()!r}")

    # ---- faultlined ----------------------------------------------------
    pb = T.load_proto(TMP)
    dcfg, ports = T.daemon_config(TMP, "wide_daemon", model, cfg, output={"stride": STRIDE})
    d = T.Daemon(FLD, dcfg)
    try:
        d.wait_http(ports["http"], timeout=120)
        serve(d, ports, pb, mods, stream_csv, model)
    finally:
        rc = d.stop()
    check(rc == 0, f"faultlined exits 0 on SIGTERM ({rc})")
    T.finish("wide_1000")


def serve(d, ports, pb, mods, stream_csv, model):
    # The stream carries noise of 8 sd on one channel of the last modality
    # from FAULT_AT on; the scored rows are the same, so write them too.
    fault_mod, fault_ch = mods[-1][0], mods[-1][2][3]
    tab = T.Table(stream_csv, mods)
    j = tab.column(fault_ch)
    vals = [r[j] for r in tab.rows[:FAULT_AT]]
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    rng = random.Random(3)
    for r in tab.rows[FAULT_AT:]:
        r[j] = mu + rng.gauss(0, 8 * sd)
    faulted = os.path.join(TMP, "wide_faulted.csv")
    with open(faulted, "w") as f:
        f.write(",".join(tab.head) + "\n")
        for r in tab.rows:
            f.write(",".join(f"{v:.6g}" for v in r) + "\n")
    fscored = os.path.join(TMP, "wide_faulted_scored.csv")
    run([FL, "score", "--model", model, "--in", faulted, "--out", fscored])
    fhead, frows = T.read_csv(fscored)

    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    check(ok, "faultlined subscribes to the publisher")
    n = len(tab.rows) - 60  # the last 60 rows follow the reload
    for i in range(n):
        pub.send_multipart([b"frame/wide", tab.frame(pb, "wide", i, i).SerializeToString()])
    nwin = (n - 60) // STRIDE + 1
    reps = T.collect(sub, pb, nwin, timeout=180)
    check(len(reps) == nwin, f"faultlined: {len(reps)} reports for {nwin} windows")
    names = [m[0] for m in mods]
    ok_layout = all([m.modality for m in r.modalities] == names and
                    all(m.channels == len(mods[k][2]) and len(m.residuals) == m.channels and
                        len(m.channel_scores) == m.channels and
                        len(m.corrected) == STRIDE * m.channels
                        for k, m in enumerate(r.modalities)) for _, r in reps)
    check(ok_layout, f"faultlined: every report names all {len(names)} modalities with each "
          "channel's residual, score and corrected samples")
    nscore = sum(len(m.channel_scores) for m in reps[0][1].modalities) if reps else 0
    check(nscore == NCH, f"faultlined: {nscore} channel scores per report")
    js, ja = fhead.index("score"), fhead.index("anomaly")
    worst, flags = 0.0, 0
    for _, r in reps:
        row = frows[r.end_seq]
        worst = max(worst, abs(r.score - row[js]) / max(1.0, abs(row[js])))
        flags += int(r.anomaly) != int(row[ja])
    check(worst < 1e-4 and flags == 0, f"faultlined: scores and flags as faultline score writes "
          f"them (worst relative {worst:.2g}, {flags} flags differ)")
    before = [r for _, r in reps if r.end_seq < FAULT_AT]
    after = [r for _, r in reps if r.end_seq >= FAULT_AT + 15]
    check(before and not any(r.anomaly for r in before),
          f"faultlined: no alarm before the fault ({sum(r.anomaly for r in before)} of "
          f"{len(before)})")
    hit = [r for r in after if r.anomaly and r.faulty_modality == fault_mod]
    check(after and len(hit) == len(after),
          f"faultlined: the noisy channel's modality {fault_mod} (the last of {len(names)}) "
          f"flagged in {len(hit)} of {len(after)} windows after the fault "
          f"(named: {sorted({r.faulty_modality for r in after})})")
    m, _ = T.metrics(ports["http"])
    check(m.get(f'faultline_anomalies_total{{modality="{fault_mod}"}}', 0) >= 1,
          f"faultlined: anomalies counted under {fault_mod}")

    # A frame with another channel count for a modality: rejected, counted.
    f = tab.frame(pb, "wide", n, n)
    f.blocks[len(names) // 2].channels += 1
    pub.send_multipart([b"frame/wide", f.SerializeToString()])
    got = T.wait_metric(ports["http"], 'faultline_frames_rejected_total{reason="channel_count"}',
                        lambda v: v >= 1, timeout=30)
    check(got == 1, f"faultlined: another channel count is rejected as channel_count ({got})")

    # SIGHUP reloads the model; the stream goes on.
    d.signal(signal.SIGHUP)
    ok = T.wait_metric(ports["http"], 'faultline_reloads_total{result="success"}',
                       lambda v: v >= 1, timeout=120)
    check(ok == 1, "faultlined: SIGHUP reloads the 1,000-channel model")
    for i in range(n, len(tab.rows)):
        pub.send_multipart([b"frame/wide", tab.frame(pb, "wide", i, i).SerializeToString()])
    more = T.collect(sub, pb, 60 // STRIDE, timeout=120)
    check(len(more) == 60 // STRIDE and all(len(r.modalities) == len(names) for _, r in more) and
          [r.end_seq for _, r in more] == list(range(n, len(tab.rows), STRIDE)),
          f"faultlined: the stream goes on after the reload ({len(more)} reports of "
          f"{60 // STRIDE})")
    m, _ = T.metrics(ports["http"])
    check(m.get("faultline_frames_processed_total") == len(tab.rows),
          f"faultlined: every valid frame processed "
          f"({m.get('faultline_frames_processed_total')} of {len(tab.rows)})")
    pub.close(0)
    sub.close(0)
    ctx.term()


if __name__ == "__main__":
    main()
