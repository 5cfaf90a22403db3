#!/usr/bin/python3
"""faultlined speed: ingest, windows per second against the offline scan,
and latency under a steady 10k frames/s.

usage: bench_daemon.py FAULTLINED FAULTLINE MODEL EPISODE_CSV CONFIG [--quick]
                       [--tune-only] [--runs N] [--rate FRAMES_PER_S] [--secs S]
                       [--against FAULTLINED2] [--sleep] [--modes M1,M2,...]

  ingest    frames/s with scoring off ([output] score = 0): the daemon is
            stopped (SIGSTOP) while the frames are queued, then resumed and
            timed until /metrics counts them all, so the sender's speed does
            not enter the number
  windows   windows/s with stride 1, measured the same way, beside
            `faultline score` (stride 1, the same rows) offline
  latency   p50/p99 of the reports' processing latency (and of the time from
            a frame's timestamp to its report's arrival here) with 10 streams
            paced at 10k frames/s in total (--rate), stride 15
  tune      the latency run with online tuning off, on at its default CPU
            budget ([tune] cpu_share 0.25) and on without pause between
            jobs (cpu_share 1), N runs each interleaved (--runs, default 3),
            S seconds each (--secs, default 6, 3 with --quick): the medians
            of the runs' p99s, their range, and the p99 of all the runs'
            reports pooled (a run's p99 rests on a few bursts of reports:
            the streams' windows end on the same tick); --against runs the
            three modes with a second faultlined too, interleaved with the
            first (an older build, to compare side by side); --tune-only
            runs only this

  cpu       (--cpu only) the daemon's own CPU time per window (utime + stime
            of the process, stride 1, 4 streams of 3000 ticks queued while
            it is stopped), N runs (--runs), alternating with the --against
            build when given: medians and the ratio.  Unlike windows/s it
            does not count the time other work on a loaded machine takes

  --modes   the tune modes to run, of off, on-share-0.25 and on-share-1
            (default all three; the ratios need off)

  --sleep   the sender sleeps until a frame is due (at most 1 ms) instead of
            polling for reports in a busy loop, which takes a whole core from
            the daemon and its tuning on a small machine; a report then waits
            up to that long before it is read, with tuning off as on

Prints one line per measurement.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402

FLD, FL, MODEL, EPISODE, CONFIG = map(os.path.abspath, sys.argv[1:6])
QUICK = "--quick" in sys.argv
TUNE_ONLY = "--tune-only" in sys.argv
RUNS = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 3
RATE = int(sys.argv[sys.argv.index("--rate") + 1]) if "--rate" in sys.argv else 10000
SECS = float(sys.argv[sys.argv.index("--secs") + 1]) if "--secs" in sys.argv else (
    3 if QUICK else 6)
SLEEP = "--sleep" in sys.argv
CPU_ONLY = "--cpu" in sys.argv
MODES = sys.argv[sys.argv.index("--modes") + 1].split(",") if "--modes" in sys.argv else None
AGAINST = (os.path.abspath(sys.argv[sys.argv.index("--against") + 1])
           if "--against" in sys.argv else None)
TMP = tempfile.mkdtemp(prefix="fld-bench-")
pb = T.load_proto(TMP)
MODS = T.modalities(CONFIG)


def daemon(name, exe=None, **sections):
    ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
    over = {"model": {"file": MODEL},
            "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "rcvhwm": 0,
                      "max_streams": 64},
            "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}", "sndhwm": 0},
            "metrics": {"listen": f"127.0.0.1:{ports['http']}"}, "log": {"level": "notice"}}
    for s, kv in sections.items():
        over.setdefault(s, {}).update(kv)
    path = os.path.join(TMP, name + ".ini")
    T.write_config(path, CONFIG, over)
    d = T.Daemon(exe or FLD, path)
    d.wait_http(ports["http"])
    return d, ports


def frames(tab, n, streams=1, ts=None):
    out = []
    for i in range(n):
        s = i % streams
        seq = i // streams
        name = f"b{s}"
        out.append([f"frame/{name}".encode(),
                    tab.frame(pb, name, seq, seq % len(tab.rows)).SerializeToString()])
    return out


def timed_drain(d, ports, msgs, key):
    """Queues msgs while the daemon is stopped, resumes it, and times until
    the metric key reaches its target."""
    ctx = zmq.Context()
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    os.kill(d.p.pid, signal.SIGSTOP)
    for m in msgs:
        pub.send_multipart(m)
    time.sleep(0.5)
    target = key[1]
    t0 = time.perf_counter()
    os.kill(d.p.pid, signal.SIGCONT)
    while True:
        m, _ = T.metrics(ports["http"])
        if m.get(key[0], 0) >= target:
            break
        time.sleep(0.002)
    dt = time.perf_counter() - t0
    ctx.destroy(linger=0)
    return dt


def bench_ingest(tab):
    n = 50000 if QUICK else 200000
    msgs = frames(tab, n, streams=8)
    d, ports = daemon("ingest", output={"score": 0})
    dt = timed_drain(d, ports, msgs, ("faultline_frames_processed_total", n))
    d.stop()
    print(f"ingest: {n} frames in {dt:.3f} s = {n / dt:,.0f} frames/s (scoring off)")


def bench_windows(tab):
    n = 1200
    msgs = frames(tab, n, streams=1)
    d, ports = daemon("windows", output={"stride": 1, "batch": 64})
    k = n - 59
    dt = timed_drain(d, ports, msgs, ("faultline_reports_total", k))
    d.stop()
    t0 = time.perf_counter()
    subprocess.run([FL, "score", "--model", MODEL, "--in", EPISODE, "--out",
                    os.path.join(TMP, "scored.csv")], check=True)
    off = time.perf_counter() - t0
    print(f"windows: daemon {k} windows in {dt:.3f} s = {k / dt:,.0f} windows/s (stride 1, "
          f"batch 64); offline faultline score {k} windows in {off:.3f} s = {k / off:,.0f} "
          f"windows/s (CSV read and write included)")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


LOOP_KEY = 'faultline_tune_loop_seconds{step="%s",stat="max"}'


def bench_latency(tab, tune=None, label="latency", exe=None):
    rate, streams, secs = RATE, 10, SECS
    d, ports = daemon(label, exe, output={"stride": 15}, **({"tune": tune} if tune else {}))
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    lat, e2e = [], []
    n = rate * secs
    payload = [tab.frame(pb, f"l{s}", 0, 0) for s in range(streams)]
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        due = t0 + sent / rate
        now = time.perf_counter()
        if now < due:
            # Read reports while waiting for the next frame's slot.
            got = 0
            for _ in range(8):
                if not poller.poll(0):
                    break
                _, p = sub.recv_multipart()
                r = pb.Report()
                r.ParseFromString(p)
                lat.append(r.latency_ns / 1e6)
                e2e.append((time.time_ns() - r.end_timestamp_ns) / 1e6)
                got += 1
            if SLEEP and not got:
                time.sleep(min(due - now, 0.001))
            continue
        s = sent % streams
        f = payload[s]
        f.seq = sent // streams
        f.timestamp_ns = time.time_ns()
        row = tab.rows[f.seq % len(tab.rows)]
        for (name, rate_m, chans), cols, b in zip(tab.mods, tab.idx, f.blocks):
            b.samples[:] = [row[j] for j in cols]
        pub.send_multipart([f"frame/l{s}".encode(), f.SerializeToString()])
        sent += 1
    elapsed = time.perf_counter() - t0
    t_end = time.time() + 5
    while time.time() < t_end:
        if not poller.poll(200):
            break
        _, p = sub.recv_multipart()
        r = pb.Report()
        r.ParseFromString(p)
        lat.append(r.latency_ns / 1e6)
        e2e.append((time.time_ns() - r.end_timestamp_ns) / 1e6)
    m, _ = T.metrics(ports["http"])
    d.stop()
    ctx.destroy(linger=0)
    if tune:
        acc = m.get('faultline_tune_updates_total{result="accepted"}', 0)
        rej = m.get('faultline_tune_updates_total{result="rejected"}', 0)
        print(f"{label}: tuning {m.get('faultline_tune_seconds_total', 0):.2f} s in jobs, "
              f"{m.get('faultline_tune_steps_total', 0):g} steps, "
              f"{acc:g} accepted, {rej:g} rejected; loop thread: job start max "
              f"{m.get(LOOP_KEY % 'prepare', 0) * 1e3:.2f} ms, swap max "
              f"{m.get(LOOP_KEY % 'swap', 0) * 1e3:.2f} ms")
    print(f"{label}: {sent} frames in {elapsed:.2f} s ({sent / elapsed:,.0f} frames/s, "
          f"{streams} streams, stride 15), {len(lat)} reports: processing p50 "
          f"{pct(lat, 50):.2f} ms p99 {pct(lat, 99):.2f} ms; frame-to-subscriber p50 "
          f"{pct(e2e, 50):.2f} ms p99 {pct(e2e, 99):.2f} ms; loop lag max "
          f"{m.get('faultline_event_loop_lag_max_seconds', 0) * 1e3:.1f} ms")
    return pct(lat, 99), pct(e2e, 99), lat, e2e


def bench_tune():
    """p99 latency with tuning off and on, interleaved runs, medians."""
    base = {"enabled": 1, "buffer": 256, "min_windows": 48, "gate": 1.0, "span": 1,
            "steps": 50, "max_updates_per_hour": 360000, "checkpoint": ""}
    modes = [("off", None), ("on-share-0.25", dict(base, cpu_share=0.25)),
             ("on-share-1", dict(base, cpu_share=1.0))]
    if MODES:
        modes = [m for m in modes if m[0] in MODES]
    exes = [("", FLD)] + ([("against ", AGAINST)] if AGAINST else [])
    res = {}
    for r in range(RUNS):
        for tag, exe in exes:
            for name, tune in modes:
                label = f"tune {tag}{name}"
                res.setdefault(label, []).append(
                    bench_latency(tab, tune, f"{label} run {r + 1}", exe))
    def med(v):
        return sorted(v)[len(v) // 2]
    for tag, exe in exes:
        if AGAINST:
            print(f"tune {tag}= {exe}")
        runs = {name: res[f"tune {tag}{name}"] for name, _ in modes}
        if "off" not in runs:
            continue
        off = [med([x[0] for x in runs["off"]]), med([x[1] for x in runs["off"]]),
               pct([v for x in runs["off"] for v in x[2]], 99),
               pct([v for x in runs["off"] for v in x[3]], 99)]
        for name, _ in modes:
            v = runs[name]
            p, e = med([x[0] for x in v]), med([x[1] for x in v])
            pp, pe = pct([y for x in v for y in x[2]], 99), pct([y for x in v for y in x[3]], 99)
            print(f"tune {tag}{name}: medians of {RUNS} runs: processing p99 {p:.2f} ms "
                  f"({p / off[0]:.2f}x off, runs {min(x[0] for x in v):.2f}-"
                  f"{max(x[0] for x in v):.2f}), frame-to-subscriber p99 {e:.2f} ms "
                  f"({e / off[1]:.2f}x off, runs {min(x[1] for x in v):.2f}-"
                  f"{max(x[1] for x in v):.2f}); pooled {sum(len(x[3]) for x in v)} reports: "
                  f"processing p99 {pp:.2f} ms ({pp / off[2]:.2f}x), frame-to-subscriber "
                  f"p99 {pe:.2f} ms ({pe / off[3]:.2f}x)")


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def window_cpu(tab, exe):
    """CPU seconds of one faultlined per window scored."""
    streams, ticks = 4, 3000
    msgs = frames(tab, streams * ticks, streams=streams)
    d, ports = daemon("cpu", exe=exe, output={"stride": 1, "batch": 64})
    k = streams * (ticks - 59)
    c0 = proc_cpu(d.p.pid)
    timed_drain(d, ports, msgs, ("faultline_reports_total", k))
    c1 = proc_cpu(d.p.pid)
    d.stop()
    return (c1 - c0) / k


def bench_cpu(tab):
    exes = [FLD] + ([AGAINST] if AGAINST else [])
    got = {e: [] for e in exes}
    for _ in range(RUNS):
        for e in exes:
            got[e].append(window_cpu(tab, e))
    med = {e: sorted(v)[len(v) // 2] for e, v in got.items()}
    for e in exes:
        print(f"cpu {e}: median {med[e] * 1e6:.1f} us CPU per window over {RUNS} runs "
              f"({', '.join(f'{v * 1e6:.1f}' for v in got[e])})")
    if AGAINST:
        print(f"cpu: {med[FLD] / med[AGAINST]:.3f}x the --against build")


tab = T.Table(EPISODE, MODS)
if CPU_ONLY:
    bench_cpu(tab)
    sys.exit(0)
if not TUNE_ONLY:
    bench_ingest(tab)
    bench_windows(tab)
    bench_latency(tab)
bench_tune()
