"""The daemon half of tests/bench/bench_torch.py: faultlined against
tests/bench/pydaemon.py (pyzmq + PyTorch, the same protocol), measured the
same way, and faultlined's batching across streams.

  throughput  frames/s at stride 1 (a report per frame) with 1 and 64
              streams: both daemons are given their streams' first 59 ticks,
              stopped (SIGSTOP) while the timed frames are queued, resumed,
              and timed until this process has received every report
  latency     p50/p99 of the reports' processing latency (frame received to
              report sent, the Report's latency_ns) at a paced 10k frames/s,
              stride 15, 10 streams
  rss         the daemons' peak resident memory (VmHWM) after the runs
  streams     faultlined's windows/s with 1, 16, 256 and 4096 streams
              (stride 1, measured as throughput), and its processing p99 at a
              paced 10k frames/s over 256 streams (stride 15)

Run alone, `bench_pydaemon.py MODEL RUNS BUILD [BUILD...]` puts faultlined of
each build directory (e.g. two commits) beside the Python daemon: the
throughput bursts in turn, RUNS times, medians and per-run ratios.
"""
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
CONFIG = os.path.join(ROOT, "config", "faultline.ini")


class Py:
    """pydaemon.py as a process with the faultlined test helpers' interface."""

    def __init__(self, model, ports, stride, tmp):
        self.p = T.spawn(
            [sys.executable, os.path.join(HERE, "pydaemon.py"), "--model", model,
             "--in", f"tcp://127.0.0.1:{ports['in']}", "--out", f"tcp://127.0.0.1:{ports['out']}",
             "--stride", str(stride), "--batch", "64", "--proto-dir", tmp],
            env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def start(kind, build, model, tmp, stride, max_streams=64):
    ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
    if kind == "py":
        return Py(model, ports, stride, tmp), ports
    over = {"model": {"file": model},
            "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "max_streams": max_streams},
            "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}", "sndhwm": 0,
                       "stride": stride},
            "metrics": {"listen": f"127.0.0.1:{ports['http']}"}, "log": {"level": "warning"}}
    path = os.path.join(tmp, f"bench-{kind}-{stride}.ini")
    T.write_config(path, CONFIG, over)
    d = T.Daemon(os.path.join(build, "daemon", "faultlined"), path)
    d.wait_http(ports["http"])
    return d, ports


def hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Frames:
    def __init__(self, pb, tab):
        self.pb, self.tab = pb, tab
        self.tmpl = tab.frame(pb, "x", 0, 0)

    def make(self, stream, seq, ts=None):
        f = self.tmpl
        f.stream, f.seq = stream, seq
        f.timestamp_ns = ts if ts is not None else seq * 10**9
        row = self.tab.rows[seq % len(self.tab.rows)]
        for cols, b in zip(self.tab.idx, f.blocks):
            b.samples[:] = [row[j] for j in cols]
        return [f"frame/{stream}".encode(), f.SerializeToString()]


def recv_reports(sub, n, timeout):
    """Counts n reports (or until timeout s without one); returns the count."""
    got = 0
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while got < n:
        if not poller.poll(int(timeout * 1000)):
            break
        while got < n:
            try:
                sub.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                break
            got += 1
    return got


def throughput(kind, build, model, tmp, fr, streams, per_stream):
    """Windows (= frames at stride 1) per second: (frames/s, RSS kB)."""
    d, ports = start(kind, build, model, tmp, 1, max_streams=max(64, streams))
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}", wait=60)
    time.sleep(0.3)  # the subscriber's connection
    names = [f"s{k}" for k in range(streams)]
    # The first 59 ticks of every stream: no window yet.
    for seq in range(59):
        for s in names:
            pub.send_multipart(fr.make(s, seq))
    # One window to know the daemon has caught up, then the timed burst.
    for s in names:
        pub.send_multipart(fr.make(s, 59))
    if recv_reports(sub, streams, 60) != streams:
        raise SystemExit(f"{kind}: warm-up reports missing")
    msgs = [fr.make(s, 60 + k) for k in range(per_stream) for s in names]
    os.kill(d.p.pid, signal.SIGSTOP)
    for m in msgs:
        pub.send_multipart(m)
    time.sleep(0.3)
    t0 = time.perf_counter()
    os.kill(d.p.pid, signal.SIGCONT)
    got = recv_reports(sub, len(msgs), 30)
    dt = time.perf_counter() - t0
    rss = hwm_kb(d.p.pid)
    d.stop()
    ctx.destroy(linger=0)
    if got != len(msgs):
        raise SystemExit(f"{kind}: {got} of {len(msgs)} reports")
    return len(msgs) / dt, rss


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def latency(kind, build, model, tmp, fr, streams, rate, secs):
    """Paced frames at rate/s over streams, stride 15: (p50 ms, p99 ms,
    frames/s sent, reports, RSS kB)."""
    d, ports = start(kind, build, model, tmp, 15, max_streams=max(64, streams))
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}", wait=60)
    time.sleep(0.3)
    pb = fr.pb
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    lat = []
    n = int(rate * secs)
    names = [f"l{k}" for k in range(streams)]
    msgs = [fr.make(names[i % streams], i // streams) for i in range(n)]

    def drain():
        while poller.poll(0):
            _, p = sub.recv_multipart()
            r = pb.Report()
            r.ParseFromString(p)
            lat.append(r.latency_ns / 1e6)

    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        due = t0 + i / rate
        while time.perf_counter() < due:
            drain()
        pub.send_multipart(m)
    elapsed = time.perf_counter() - t0
    t_end = time.time() + 5
    while time.time() < t_end and poller.poll(300):
        drain()
    rss = hwm_kb(d.p.pid)
    d.stop()
    ctx.destroy(linger=0)
    return pct(lat, 50), pct(lat, 99), n / elapsed, len(lat), rss


def run(build, model, csv, tmp, runs=3, quick=False):
    pb = T.load_proto(tmp)
    tab = T.Table(csv, T.modalities(CONFIG))
    fr = Frames(pb, tab)
    ok = True
    res = {}
    per = {1: 300 if quick else 2000, 64: 4 if quick else 40}
    for r in range(1 if quick else runs):
        for streams in (1, 64):
            for kind in ("c", "py"):
                res.setdefault((kind, streams), []).append(
                    throughput(kind, build, model, tmp, fr, streams, per[streams]))
    lat = {}
    for r in range(1 if quick else runs):
        for kind in ("c", "py"):
            lat.setdefault(kind, []).append(
                latency(kind, build, model, tmp, fr, 10, 10000, 1 if quick else 3))
    print()
    print("| daemon (1 thread each) | faultlined | Python (pyzmq + PyTorch) | ratio |")
    print("| --- | --- | --- | --- |")
    for streams in (1, 64):
        c = statistics.median(x[0] for x in res[("c", streams)])
        p = statistics.median(x[0] for x in res[("py", streams)])
        print(f"| frames/s, stride 1, {streams} stream{'s' if streams > 1 else ''} | {c:,.0f} | "
              f"{p:,.0f} | {c / p:.1f}x |")
    for k, name in ((1, "p99"), (0, "p50")):
        c = statistics.median(x[k] for x in lat["c"])
        p = statistics.median(x[k] for x in lat["py"])
        print(f"| processing {name}, 10k frames/s paced, 10 streams, stride 15 | {c:.2f} ms | "
              f"{p:.2f} ms | {p / c:.1f}x |")
    cs = statistics.median(x[2] for x in lat["c"])
    ps = statistics.median(x[2] for x in lat["py"])
    print(f"| frames/s the sender reached in that run | {cs:,.0f} | {ps:,.0f} | |")
    crss = max(x[1] for v in (res[("c", 1)], res[("c", 64)]) for x in v)
    prss = max(x[1] for v in (res[("py", 1)], res[("py", 64)]) for x in v)
    crss = max(crss, max(x[4] for x in lat["c"]))
    prss = max(prss, max(x[4] for x in lat["py"]))
    print(f"| peak RSS (VmHWM), default batch 16 / 64 | {crss / 1024:.1f} MB | "
          f"{prss / 1024:.1f} MB | {prss / crss:.1f}x less |")

    # Batching across streams: faultlined alone.
    print()
    print("| faultlined, stride 1 | windows/s | windows per stream timed |")
    print("| --- | --- | --- |")
    counts = (1, 16, 256) if quick else (1, 16, 256, 4096)
    per_s = {1: 300 if quick else 2000, 16: 20 if quick else 125, 256: 2 if quick else 8,
             4096: 1}
    for streams in counts:
        v = [throughput("c", build, model, tmp, fr, streams, per_s[streams])[0]
             for _ in range(1 if quick else runs)]
        print(f"| {streams} stream{'s' if streams > 1 else ''} | {statistics.median(v):,.0f} | "
              f"{per_s[streams]} |")
    # At least 90 ticks a stream, so that every stream reaches its windows.
    v = [latency("c", build, model, tmp, fr, 256, 10000, 2.4 if quick else 4)
         for _ in range(1 if quick else runs)]
    print(f"| paced 10k frames/s over 256 streams, stride 15: processing p50 / p99 | "
          f"{statistics.median(x[0] for x in v):.2f} / {statistics.median(x[1] for x in v):.2f} ms"
          f" | {statistics.median(x[3] for x in v):.0f} reports |")
    return ok


def compare(builds, model, runs):
    """faultlined of each build directory (one model file for all) and the Python
    daemon, the throughput bursts above in turn, runs times: a table of medians."""
    import tempfile
    tmp = tempfile.mkdtemp(prefix="fl-bench-compare-")
    csv = os.path.join(tmp, "sim.csv")
    subprocess.run([os.path.join(builds[0], "tools", "faultline"), "simulate", "--rows", "700",
                    "--seed", "3", "--anomalies", "0", "--out", csv], check=True,
                   capture_output=True)
    pb = T.load_proto(tmp)
    fr = Frames(pb, T.Table(csv, T.modalities(CONFIG)))
    kinds = [(b, "c") for b in builds] + [("Python", "py")]
    res, rss = {}, {}
    for _ in range(runs):
        for streams, per in ((1, 2000), (64, 40)):
            for name, kind in kinds:
                fps, kb = throughput(kind, name if kind == "c" else builds[0], model, tmp, fr,
                                     streams, per)
                res.setdefault((name, streams), []).append(fps)
                rss.setdefault((name, streams), []).append(kb / 1024)
    print("| frames/s, stride 1, medians of", runs, "| " + " | ".join(n for n, _ in kinds) + " |")
    print("| --- " * (len(kinds) + 1) + "|")
    for streams in (1, 64):
        print(f"| {streams} stream{'s' if streams > 1 else ''} | " +
              " | ".join(f"{statistics.median(res[(n, streams)]):,.0f}" for n, _ in kinds) + " |")
    print("| VmHWM MB, 1 / 64 streams | " + " | ".join(
        f"{statistics.median(rss[(n, 1)]):.1f} / {statistics.median(rss[(n, 64)]):.1f}"
        for n, _ in kinds) + " |")
    for streams in (1, 64):
        py = res[("Python", streams)]
        for n, _ in kinds[:-1]:
            r = sorted(a / b for a, b in zip(res[(n, streams)], py))
            print(f"{n}, {streams} stream(s): {statistics.median(r):.2f}x the Python daemon "
                  f"(per run {r[0]:.2f}-{r[-1]:.2f}x)")


if __name__ == "__main__":
    # usage: bench_pydaemon.py MODEL RUNS BUILD [BUILD...]
    compare([os.path.abspath(b) for b in sys.argv[3:]], os.path.abspath(sys.argv[1]),
            int(sys.argv[2]))
