#!/usr/bin/python3
"""Aggregate windows per second with 1, 2 and 3 faultlined daemons sharding
the streams of one feed behind a frame proxy and a report proxy
(`faultline proxy`), all on this machine over loopback.

usage: bench_scale.py FAULTLINED FAULTLINE MODEL EPISODE_CSV CONFIG [RUNS]

Every stream's frames are serialised beforehand and sent as one burst from
one publisher through the frame proxy; stride 1 makes every frame after the
first window's a window to score.  The time runs from the first frame sent
to the last report received through the report proxy; windows/s is the
reports over that time.  Beside it, the CPU time the daemons and the two
proxies used per run (utime + stime from /proc), which a shared machine's
load distorts far less than wall-clock rates: windows per daemon CPU-second
says whether sharding costs anything per window, and the proxies' share says
what the fan-in costs.  RUNS (default 5) bursts per daemon count, each on
new streams; the median is printed with every run.
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402

FLD, FL, MODEL, EPISODE, CONFIG = map(os.path.abspath, sys.argv[1:6])
RUNS = int(sys.argv[6]) if len(sys.argv) > 6 else 5
TMP = tempfile.mkdtemp(prefix="fl-bench-scale-")
sys.argv = sys.argv[:1]
pb = T.load_proto(TMP)
MODS = T.modalities(CONFIG)
W = 60
STREAMS, TICKS = 60, 560  # 60 streams divide among 1, 2 and 3 daemons


def cpu(pid):
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def proxy(name):
    front, back, http = T.free_port(), T.free_port(), T.free_port()
    log = open(os.path.join(TMP, name + ".log"), "w")
    p = T.spawn([FL, "proxy", "--frontend", f"tcp://127.0.0.1:{front}", "--backend",
                 f"tcp://127.0.0.1:{back}", "--metrics", f"127.0.0.1:{http}",
                 "--hwm", "0"], stdout=log, stderr=log)
    t0 = time.time()
    while time.time() - t0 < 20:
        try:
            if T.http_get(http, "/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    return p, front, back


def rows():
    tab = T.Table(EPISODE, MODS)
    out = []
    for r in range(len(tab.rows)):
        f = tab.frame(pb, "x", 0, r)
        for fld in ("stream", "seq", "timestamp_ns"):
            f.ClearField(fld)
        out.append(f.SerializeToString())
    return out


def bench(n, body):
    fp, ffront, fback = proxy(f"frames{n}")
    rp, rfront, rback = proxy(f"reports{n}")
    daemons, https = [], []
    for d in range(n):
        http = T.free_port()
        path = os.path.join(TMP, f"d{n}-{d}.ini")
        T.write_config(path, CONFIG, {
            "model": {"file": MODEL},
            "input": {"endpoint": f"tcp://127.0.0.1:{fback}", "bind": 0,
                      "topic": f"frame/s{d}-", "max_streams": 1000, "rcvhwm": 0},
            "output": {"endpoint": f"tcp://127.0.0.1:{rfront}", "bind": 0, "stride": 1,
                       "sndhwm": 0},
            "metrics": {"listen": f"127.0.0.1:{http}"},
            "log": {"level": "warning"}})
        daemons.append(T.Daemon(FLD, path))
        https.append(http)
    for dm, http in zip(daemons, https):
        dm.wait_http(http)
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{rback}")
    for http in https:
        T.wait_metric(http, "faultline_report_subscriptions", lambda v: v >= 1)
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(f"tcp://127.0.0.1:{ffront}")
    seen = set()
    pub.setsockopt(zmq.RCVTIMEO, 20000)
    while len(seen) < n:
        seen.add(pub.recv())
    rates, per_cpu, px_share = [], [], []
    for run in range(RUNS):
        names = [f"s{i % n}-r{run}-{i:03d}" for i in range(STREAMS)]
        msgs = []
        for seq in range(TICKS):
            for s in names:
                h = pb.Frame(stream=s, seq=seq, timestamp_ns=(seq + 1) * 10**9)
                msgs.append((b"frame/" + s.encode(),
                             h.SerializeToString() + body[seq % len(body)]))
        want = STREAMS * (TICKS - W + 1)
        got = 0
        c0 = [cpu(dm.p.pid) for dm in daemons]
        p0 = cpu(fp.pid) + cpu(rp.pid)
        t0 = time.perf_counter()
        for topic, payload in msgs:
            pub.send(topic, zmq.SNDMORE)
            pub.send(payload)
        t_last = t0
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while got < want and poller.poll(10000):
            while True:
                try:
                    sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                got += 1
            t_last = time.perf_counter()
        if got != want:
            raise RuntimeError(f"{n} daemons, run {run}: {got} of {want} reports")
        rates.append(want / (t_last - t0))
        dc = sum(cpu(dm.p.pid) for dm in daemons) - sum(c0)
        pc = cpu(fp.pid) + cpu(rp.pid) - p0
        per_cpu.append(want / dc)
        px_share.append(pc / (dc + pc))
    for dm in daemons:
        dm.stop()
    for p in (fp, rp):
        p.terminate()
        p.wait(15)
    ctx.destroy(linger=0)
    return rates, per_cpu, px_share


body = rows()
print(f"{STREAMS} streams x {TICKS} ticks, stride 1: "
      f"{STREAMS * (TICKS - W + 1)} windows per run, {RUNS} runs, {os.cpu_count()} CPUs")
print(f"load average before: {os.getloadavg()[0]:.1f}")
print("daemons  windows/s (median)  windows per daemon CPU-s  proxies' CPU share  runs (windows/s)")
res = {}
for n in (1, 2, 3):
    r, c, x = bench(n, body)
    res[n] = statistics.median(r)
    print(f"{n:7d}  {res[n]:18.0f}  {statistics.median(c):24.0f}  "
          f"{100 * statistics.median(x):17.1f} %  " + " ".join(f"{v:.0f}" for v in r),
          flush=True)
print(f"load average after: {os.getloadavg()[0]:.1f}")
print("speed-up over one daemon: " +
      ", ".join(f"{n}: {res[n] / res[1]:.2f}x" for n in (2, 3)))
