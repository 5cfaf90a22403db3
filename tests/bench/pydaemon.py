#!/usr/bin/python3
"""The Python daemon a user would otherwise deploy: pyzmq + PyTorch, the same
protocol as faultlined (proto/faultline.proto), the benchmark's baseline.

usage: pydaemon.py --model MODEL --in ENDPOINT --out ENDPOINT [--stride N]
                   [--batch N] [--threads N] [--proto-dir DIR]

It binds a SUB socket for [frame/<stream>][Frame] and a PUB socket for
[report/<stream>][Report]; keeps the last `window` ticks of every stream in a
ring per modality; every `stride` ticks of a stream queues its window; and
after each pass over the waiting messages (at most 256, as faultlined's
drain budget) scores the queued windows as one batch, up to --batch, as
faultlined does: standardisation (torchmodel.normalise), the forward pass
with the block (the corrected estimate) and without it (the stage-1
estimate) and the head, per-channel tail residuals and noise features
standardised by the model's calibration, the window's score against its
threshold, and the corrected samples of the newest stride ticks.  Frames
are checked (modalities, channel counts, sample counts, finite values) and
bad ones skipped.  No hysteresis, metrics or gap handling: the baseline
is given the benefit of doing less.  SIGTERM stops it.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stride", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--proto-dir")
    a = ap.parse_args()

    import torch
    import zmq
    import torchmodel as TM
    torch.set_num_threads(a.threads)
    pdir = a.proto_dir or tempfile.mkdtemp(prefix="pydaemon-")
    if not os.path.exists(os.path.join(pdir, "faultline_pb2.py")):
        subprocess.run(["protoc", "--proto_path=" + os.path.join(ROOT, "proto"),
                        "--python_out=" + pdir, os.path.join(ROOT, "proto", "faultline.proto")],
                       check=True)
    sys.path.insert(0, pdir)
    import faultline_pb2 as pb

    net, spec, mean, std, clamp, t, meta = TM.load(a.model)
    net.eval()
    det = json.loads(meta["faultline.detect"])
    thr, tail = det["threshold"], det.get("tail", spec["window"] // 4)
    res_mu, res_sd = t["calib.res_mu"], np.maximum(t["calib.res_sd"], 1e-6)
    var_mu, var_sd = t["calib.var_mu"], np.maximum(t["calib.var_sd"], 1e-6)
    W, S = spec["window"], a.stride
    mods = spec["modalities"]
    names = {m["name"]: i for i, m in enumerate(mods)}
    shape = [(len(m["channels"]), m["rate"]) for m in mods]
    version = f"{os.path.getsize(a.model):x}"

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
    sub.bind(a.inp)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(a.out)
    streams = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def score(pending):
        B = len(pending)
        raw = [np.stack([p[3][i] for p in pending]) for i in range(len(mods))]
        xs, ms = TM.normalise(spec, mean, std, clamp, raw)
        with torch.inference_mode():
            tx = [torch.from_numpy(x) for x in xs]
            z = net.encode(tx)
            yc = [y.numpy() for y in net.decode(net.block(z))]
            y1 = [y.numpy() for y in net.decode(z)]
            emb = net.head(z).numpy()
        off = 0
        chan = []
        resid = []
        for i, (C, r) in enumerate(shape):
            t0 = (W - tail) * r
            x, m = xs[i][:, :, t0:], ms[i][:, :, t0:]
            n = np.maximum(m.sum(2), 1)
            e = (x - y1[i][:, :, t0:]) * m
            mse = (e * e).sum(2) / n
            d = np.diff(x, axis=2)
            rough = (d * d).mean(2)
            zr = (np.log(mse + 1e-6) - res_mu[off:off + C]) / res_sd[off:off + C]
            zv = -(np.log(rough + 1e-6) - var_mu[off:off + C]) / var_sd[off:off + C]
            chan.append(np.maximum(zr, zv))
            resid.append(np.sqrt(mse))
            off += C
        for k, (st, seq, ts, rw, trecv) in enumerate(pending):
            rep = pb.Report(stream=st["name"], seq=st["reports"], end_seq=seq, end_timestamp_ns=ts,
                            threshold=thr, window=W, stride=S, model_version=version)
            best, bi = -np.inf, -1
            for i, (C, r) in enumerate(shape):
                cs = chan[i][k]
                ms_ = float(cs.max())
                if ms_ > best:
                    best, bi = ms_, i
                T, t0 = W * r, (W - S) * r
                faulty = cs > thr
                est = yc[i][k] * std[sum(c for c, _ in shape[:i]):][:C, None] + \
                    mean[sum(c for c, _ in shape[:i]):][:C, None]
                corr = np.where(faulty[:, None] | np.isnan(rw[i]), est, rw[i])
                rep.modalities.add(modality=mods[i]["name"], channels=C, rate=r, score=ms_,
                                   flag=bool(ms_ > thr), residuals=resid[i][k].tolist(),
                                   channel_scores=cs.tolist(), channel_faulty=faulty.tolist(),
                                   corrected=corr[:, t0:].T.flatten().tolist())
            rep.score = best
            rep.anomaly = bool(best > thr)
            rep.faulty_modality = mods[bi]["name"] if rep.anomaly else ""
            rep.latency_ns = time.perf_counter_ns() - trecv
            pub.send_multipart([b"report/" + st["name"].encode(), rep.SerializeToString()])
            st["reports"] += 1

    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while not stop:
        if not poller.poll(100):
            continue
        pending = []
        for _ in range(256):
            try:
                parts = sub.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                break
            trecv = time.perf_counter_ns()
            try:
                f = pb.Frame.FromString(parts[-1])
            except Exception:
                continue
            blocks = [None] * len(mods)
            ok = bool(f.stream)
            for b in f.blocks:
                i = names.get(b.modality)
                if i is None or b.channels != shape[i][0] or len(b.samples) != shape[i][0] * shape[i][1]:
                    ok = False
                    break
                blocks[i] = np.asarray(b.samples, dtype=np.float32).reshape(shape[i][1], shape[i][0]).T
                if not np.all(np.isfinite(blocks[i]) | np.isnan(blocks[i])):
                    ok = False
            if not ok:
                continue
            st = streams.get(f.stream)
            if st is None:
                st = streams[f.stream] = {"name": f.stream, "ticks": 0, "head": 0, "last": -1,
                                          "reports": 0,
                                          "ring": [np.zeros((C, W * r), np.float32) for C, r in shape]}
            if f.seq <= st["last"]:
                continue
            h = st["head"]
            for i, (C, r) in enumerate(shape):
                st["ring"][i][:, h * r:(h + 1) * r] = blocks[i] if blocks[i] is not None else np.nan
            st["head"] = (h + 1) % W
            st["ticks"] += 1
            st["last"] = f.seq
            if st["ticks"] >= W and (st["ticks"] - W) % S == 0:
                hh = st["head"]
                win = [np.concatenate([rg[:, hh * r:], rg[:, :hh * r]], 1)
                       for rg, (C, r) in zip(st["ring"], shape)]
                pending.append((st, f.seq, f.timestamp_ns, win, trecv))
                if len(pending) >= a.batch:
                    score(pending)
                    pending = []
        if pending:
            score(pending)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
