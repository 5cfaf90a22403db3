#!/usr/bin/python3
"""faultline beside PyTorch, on the same machine in one run.

usage: bench_torch.py --build DIR [--model MODEL] [--runs N] [--threads 1,2]
                      [--quick] [--no-daemon] [--no-train]

The model (default: DIR/tests/daemon/daemon_test.model, the default
architecture of config/faultline.ini trained briefly) is loaded from its
safetensors file by both sides: lib/ through DIR/tests/bench_model, PyTorch
through tests/bench/torchmodel.py.  Each measurement runs in a fresh process
per side, the sides alternate, and the table shows medians of --runs runs.

  parity   standardised inputs, outputs with and without the block and the
           embedding of C and PyTorch agree within tolerance (asserted; the
           exit status is 1 otherwise), and so do the losses of the first
           training steps of both stages
  infer    forward pass (encoders, block, decoders, head) per window at
           batch 1, windows/s at batch 1, 8, 64, 256; the detector's pass
           (both decoder passes, head, scores) in C.  The C side runs the
           forward-only context faultlined runs (fl_ctx_create_infer, dense
           layers through fl_dense_infer), and times a training context
           (dense layers through sgemm) alternately with it as well
  floor    one matrix-vector product over every weight of the model
           (cblas_sgemv): the batch-1 weight-streaming floor
  bound    the sum of plain cblas_sgemm's times at the forward pass's own
           GEMM shapes at batch 64 and 256: the share of it reached
  train    one epoch of stage 1 and of stage 2 (forward, backward, clipping,
           Adam, Lipschitz projection) on the same 9000 windows, batch 64
  rss      peak resident memory of each side's inference process
  daemon   faultlined against tests/bench/pydaemon.py (pyzmq + PyTorch, the
           same protocol): frames/s at stride 1 with 1 and 64 streams,
           processing p99 at a paced 10k frames/s, resident memory; and
           faultlined's windows/s with 1, 16, 256 and 4096 streams

--quick (a meson test; also with FAULTLINE_QUICK=1 in the environment, as
the documented commands are run by the test readme_commands) runs the parity
checks and one short timing of each kind, with small counts.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)


# ---- data -------------------------------------------------------------------


def windows_from_csv(path, spec, n, start=0):
    """n raw windows (stride 1) of a simulator CSV: [(n, C, T)] per modality."""
    import csv
    with open(path, newline="") as f:
        r = csv.reader(f)
        head = next(r)
        rows = [row for row in r]
    col = {h: i for i, h in enumerate(head)}
    W = spec["window"]
    need = start + n + W - 1
    assert len(rows) >= need, f"{path}: {len(rows)} rows, need {need}"
    out = []
    for md in spec["modalities"]:
        rate, chans = md["rate"], md["channels"]
        names = [[c if rate == 1 else f"{c}.{q}" for q in range(rate)] for c in chans]
        idx = np.array([[col[x] for x in qs] for qs in names])  # (C, rate)
        tab = np.array([[float(row[j]) for j in idx.flatten()] for row in rows[start:need]],
                       dtype=np.float32).reshape(need - start, len(chans), rate)
        series = tab.transpose(1, 0, 2).reshape(len(chans), -1)  # (C, rows * rate)
        T = W * rate
        win = np.stack([series[:, k * rate:k * rate + T] for k in range(n)])
        out.append(np.ascontiguousarray(win))
    return out


def write_raw(path, wins):
    """The windows as bench_model reads them: per window, each modality's (C, T)."""
    n = wins[0].shape[0]
    flat = np.concatenate([w.reshape(n, -1) for w in wins], 1).astype("<f4")
    flat.tofile(path)


def read_raw(path, spec):
    flat = np.fromfile(path, dtype="<f4")
    sizes = [len(m["channels"]) * spec["window"] * m["rate"] for m in spec["modalities"]]
    n = flat.size // sum(sizes)
    flat = flat.reshape(n, -1)
    out, off = [], 0
    for md, s in zip(spec["modalities"], sizes):
        out.append(flat[:, off:off + s].reshape(n, len(md["channels"]), -1))
        off += s
    return out


def inject(wins, std, seed=5):
    """Stage 2's inputs: 3 of 4 windows get an offset of 3 sd on one channel
    of one modality over the window's second half.  (faulted windows, labels)."""
    rng = np.random.default_rng(seed)
    n = wins[0].shape[0]
    out = [w.copy() for w in wins]
    label = np.zeros(n, dtype="<i4")
    offs = np.cumsum([0] + [w.shape[1] for w in wins])
    for k in range(n):
        if rng.random() < 0.25:
            continue
        i = int(rng.integers(len(wins)))
        c = int(rng.integers(wins[i].shape[1]))
        T = wins[i].shape[2]
        out[i][k, c, T // 2:] += 3.0 * std[offs[i] + c]
        label[k] = -1
    return out, label


# ---- the PyTorch side (run as --worker in its own process) --------------------


def peak_rss_kb():
    """VmHWM: ru_maxrss would carry the parent's peak across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def timeit(fn, reps):
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    inner = int(20e-3 / one) + 1 if one > 0 else 1000
    ts = []
    for _ in range(reps):
        s = time.perf_counter()
        for _ in range(inner):
            fn()
        ts.append((time.perf_counter() - s) / inner)
    return statistics.median(ts)


def worker(args):
    import torch
    import torchmodel as TM
    torch.set_num_threads(args.threads)
    net, spec, mean, std, clamp, _, _ = TM.load(args.model)
    raw = read_raw(args.raw, spec)
    n = raw[0].shape[0]
    if args.worker == "parity":
        xs, _ = TM.normalise(spec, mean, std, clamp, raw)
        outs = []
        with torch.no_grad():
            tx = [torch.from_numpy(x) for x in xs]
            z = net.encode(tx)
            yb, emb = net.decode(net.block(z)), net.head(z)
            y1 = net.decode(z)
        parts = [x.reshape(n, -1) for x in xs] + [y.numpy().reshape(n, -1) for y in yb] + \
                [y.numpy().reshape(n, -1) for y in y1] + [emb.numpy()]
        np.concatenate(parts, 1).astype("<f4").tofile(args.out)
    elif args.worker == "time":
        xs, _ = TM.normalise(spec, mean, std, clamp, raw)
        tx = [torch.from_numpy(x) for x in xs]
        with torch.inference_mode():
            for B in (1, 8, 64, 256):
                xb = [x[:B].contiguous() for x in tx]
                print(f"forward_b{B}_s {timeit(lambda: net(xb), args.reps):.9f}")
    elif args.worker == "rss":
        xs, _ = TM.normalise(spec, mean, std, clamp, [r[:64] for r in raw])
        tx = [torch.from_numpy(x) for x in xs]
        with torch.inference_mode():
            for B in (1, 64):
                for _ in range(20):
                    net([x[:B] for x in tx])
    elif args.worker == "train":
        raw2 = read_raw(args.raw2, spec)
        label = torch.from_numpy(np.fromfile(args.labels, dtype="<i4"))
        x1 = [torch.from_numpy(x) for x in TM.normalise(spec, mean, std, clamp, raw)[0]]
        x2 = [torch.from_numpy(x) for x in TM.normalise(spec, mean, std, clamp, raw2)[0]]
        start = {k: v.detach().clone() for k, v in net.state_dict().items()}
        for stage in (1, 2):
            net.load_state_dict(start)
            net.v = {}
            tr = TM.Trainer(net, stage)
            t, step = 0.0, 0
            for w0 in range(0, n - 1, 64):
                B = min(64, n - w0)
                xs = [x[w0:w0 + B] for x in (x1 if stage == 1 else x2)]
                tg = [x[w0:w0 + B] for x in x1]
                t0 = time.perf_counter()
                loss, closs = tr.step(xs, tg, label[w0:w0 + B])
                t += time.perf_counter() - t0
                if step < args.steps:
                    print(f"stage{stage}_step{step}_loss {loss:.7g} {closs:.7g}")
                step += 1
            print(f"stage{stage}_steps {step}\nstage{stage}_epoch_s {t:.6f}")
    print(f"maxrss_kb {peak_rss_kb()}")


# ---- the driver ----------------------------------------------------------------


def parse_kv(text):
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] not in out:  # the first maxrss_kb wins
            out[parts[0]] = [float(v) for v in parts[1:]] if len(parts) > 2 else float(parts[1])
    return out


def run(cmd, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(cmd, capture_output=True, text=True, env=e)
    if p.returncode:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return parse_kv(p.stdout)


def threads_env(t):
    return {"OPENBLAS_NUM_THREADS": str(t), "OMP_NUM_THREADS": str(t)}


def c_side(a, mode, *rest, threads=1):
    return run([a.bench_model, mode, a.model, *map(str, rest)], threads_env(threads))


def torch_side(a, mode, threads=1, **kw):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--model", a.model,
           "--threads", str(threads)]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    return run(cmd, threads_env(threads))


def check_parity(a, tmp, spec, csv):
    wins = windows_from_csv(csv, spec, 200, start=300)
    # Missing samples and out-of-range values exercise the masks and clamps.
    wins[1][3, 0, 10:14] = np.nan
    wins[0][5, 1, 100] = 1e6
    raw = os.path.join(tmp, "parity.raw")
    write_raw(raw, wins)
    c_out, t_out = os.path.join(tmp, "c.out"), os.path.join(tmp, "t.out")
    c_side(a, "parity", raw, c_out)
    torch_side(a, "parity", raw=raw, out=t_out)
    c, t = np.fromfile(c_out, "<f4"), np.fromfile(t_out, "<f4")
    n = 200
    c, t = c.reshape(n, -1), t.reshape(n, -1)
    per = sum(len(m["channels"]) * spec["window"] * m["rate"] for m in spec["modalities"])
    names = ["standardised input", "output with block", "output without block", "embedding"]
    bounds = [0, per, 2 * per, 3 * per, c.shape[1]]
    ok = True
    for k, name in enumerate(names):
        cc, tt = c[:, bounds[k]:bounds[k + 1]], t[:, bounds[k]:bounds[k + 1]]
        err = float(np.max(np.abs(cc - tt)))
        scale = float(np.max(np.abs(tt)))
        good = err <= 1e-4 * max(1.0, scale)
        ok &= good
        print(f"parity {name:22s} max |C - torch| = {err:.2e} (max |value| {scale:.3g}): "
              f"{'ok' if good else 'FAIL'}")
    return ok


def check_train_parity(ct, tt, steps):
    ok = True
    for stage in (1, 2):
        for s in range(steps):
            k = f"stage{stage}_step{s}_loss"
            c, t = ct[k], tt[k]
            good = all(abs(x - y) <= 2e-3 * max(1e-3, abs(y)) for x, y in zip(c, t))
            ok &= good
            print(f"parity training stage {stage} step {s}: loss C {c[0]:.6f} torch {t[0]:.6f}, "
                  f"contrastive C {c[1]:.6f} torch {t[1]:.6f}: {'ok' if good else 'FAIL'}")
    return ok


def med(rs, key):
    return statistics.median(r[key] for r in rs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build")
    ap.add_argument("--model")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-daemon", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--train-windows", type=int, default=9000)
    # worker arguments
    ap.add_argument("--worker")
    ap.add_argument("--raw")
    ap.add_argument("--raw2")
    ap.add_argument("--labels")
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    if a.worker:
        a.threads = int(a.threads)
        return worker(a)

    import torchmodel as TM
    build = os.path.abspath(a.build)
    a.bench_model = os.path.join(build, "tests", "bench_model")
    a.model = os.path.abspath(a.model or os.path.join(build, "tests", "daemon", "daemon_test.model"))
    fl = os.path.join(build, "tools", "faultline")
    threads = [int(t) for t in a.threads.split(",")]
    if os.environ.get("FAULTLINE_QUICK") == "1":
        a.quick = True
    if a.quick:
        a.runs, a.reps, a.train_windows, threads = 1, 3, 640, [1]
    _, spec, mean, std, clamp, _, _ = TM.load(a.model)
    tmp = tempfile.mkdtemp(prefix="fl-bench-torch-")
    csv = os.path.join(tmp, "sim.csv")
    rows = max(a.train_windows, 600) + spec["window"] + 10
    subprocess.run([fl, "simulate", "--rows", str(rows), "--seed", "3", "--anomalies", "0",
                    "--out", csv], check=True, capture_output=True)
    ok = check_parity(a, tmp, spec, csv)

    # Inference timing: 256 windows, both sides in turn, each in a fresh process.
    raw256 = os.path.join(tmp, "infer.raw")
    write_raw(raw256, windows_from_csv(csv, spec, 256))
    res = {}
    for t in threads:
        cs, ts = [], []
        for r in range(a.runs):
            cs.append(c_side(a, "time", raw256, t, a.reps, threads=t))
            ts.append(torch_side(a, "time", threads=t, raw=raw256, reps=a.reps))
        res[t] = (cs, ts)
    # Peak memory of a process that only loads the model and runs it.
    rss_c = [c_side(a, "rss", raw256)["maxrss_kb"] for _ in range(a.runs)]
    rss_t = [torch_side(a, "rss", raw=raw256)["maxrss_kb"] for _ in range(a.runs)]

    trains = {}
    if not a.no_train:
        wins = windows_from_csv(csv, spec, a.train_windows)
        raw = os.path.join(tmp, "train.raw")
        raw2 = os.path.join(tmp, "train2.raw")
        lab = os.path.join(tmp, "labels.i32")
        write_raw(raw, wins)
        w2, label = inject(wins, std)
        write_raw(raw2, w2)
        label.tofile(lab)
        del wins, w2
        for t in threads:
            cs, ts = [], []
            for r in range(a.runs):
                cs.append(c_side(a, "train", raw, raw2, lab, t, 3, threads=t))
                ts.append(torch_side(a, "train", threads=t, raw=raw, raw2=raw2, labels=lab, steps=3))
            if t == threads[0]:
                ok &= check_train_parity(cs[0], ts[0], 3)
            trains[t] = (cs, ts)

    # ---- the table
    c1 = res[threads[0]][0]
    flops = c1[0]["flops_per_window"]
    print()
    print(f"model: {os.path.basename(a.model)}, {int(c1[0]['params']):,} parameters "
          f"({c1[0]['params'] * 4 / 1e6:.1f} MB float32), {flops / 1e6:.2f} MFLOP per window "
          f"(forward, block and head on); medians of {a.runs} runs")
    print()
    print("| measurement | threads | faultline (C) | PyTorch | C / PyTorch speed |")
    print("| --- | --- | --- | --- | --- |")
    for t in threads:
        cs, ts = res[t]
        c, p = med(cs, "forward_b1_s"), med(ts, "forward_b1_s")
        print(f"| latency per window, batch 1 | {t} | {c * 1e6:.1f} us | {p * 1e6:.1f} us | "
              f"{p / c:.1f}x |")
        for B in (1, 8, 64, 256):
            c, p = med(cs, f"forward_b{B}_s"), med(ts, f"forward_b{B}_s")
            print(f"| windows/s, batch {B} | {t} | {B / c:,.0f} | {B / p:,.0f} | {p / c:.1f}x |")
        if t in trains:
            cs2, ts2 = trains[t]
            for stage in (1, 2):
                c, p = med(cs2, f"stage{stage}_epoch_s"), med(ts2, f"stage{stage}_epoch_s")
                print(f"| stage-{stage} epoch, {a.train_windows} windows | {t} | {c:.3f} s | "
                      f"{p:.3f} s | {p / c:.1f}x |")
    c, p = statistics.median(rss_c), statistics.median(rss_t)
    print(f"| peak RSS of a process running the model (batch 1 and 64) | 1 | {c / 1024:.1f} MB | "
          f"{p / 1024:.1f} MB | {p / c:.1f}x less |")
    print()
    print("| limit (C, 1 thread) | time | share reached |")
    print("| --- | --- | --- |")
    cs = res[threads[0]][0]
    fl_b1, floor = med(cs, "forward_b1_s"), med(cs, "floor_gemv_s")
    print(f"| weight-streaming floor: one sgemv pass over all weights | {floor * 1e6:.1f} us | "
          f"batch-1 forward {fl_b1 * 1e6:.1f} us = {fl_b1 / floor:.2f}x the floor |")
    for B in (64, 256):
        bound, fwd = med(cs, f"sgemm_bound_b{B}_s"), med(cs, f"forward_b{B}_s")
        print(f"| sgemm bound, batch {B} ({flops * B / bound / 1e9:.1f} GFLOP/s at the "
              f"model's shapes) | {bound * 1e6 / B:.1f} us/window | forward "
              f"{fwd * 1e6 / B:.1f} us/window = {bound / fwd:.0%} of the bound "
              f"({flops * B / fwd / 1e9:.1f} GFLOP/s) |")
    for B in (1, 8, 64, 256):
        ti, tt = med(cs, f"forward_pair_b{B}_s"), med(cs, f"forward_train_b{B}_s")
        print(f"| forward, inference context against training context (sgemm), batch {B} | "
              f"{ti * 1e6 / B:.1f} / {tt * 1e6 / B:.1f} us/window | {tt / ti:.2f}x |")
    for B in (1, 64):
        s = med(cs, f"score_b{B}_s")
        print(f"| detector pass (fl_detect_score), batch {B} | {s * 1e6 / B:.1f} us/window | "
              f"{B / s:,.0f} windows/s |")

    if not a.no_daemon:
        import bench_pydaemon
        ok &= bench_pydaemon.run(build, a.model, csv, tmp, runs=a.runs, quick=a.quick)
    print("parity:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
