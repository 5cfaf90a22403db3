"""Where faultlined's resident memory goes under the daemon benchmark's load.

  /usr/bin/python3 tests/bench/daemon_memory.py --build build [--runs 3]

Runs the faultlined half of tests/bench/bench_pydaemon.py (stride-1 bursts
with 1 and 64 streams, then 10k frames/s paced over 10 streams), samples the
daemon's /proc/PID/smaps every 10 ms, and prints per run its VmHWM and, at
the largest VmRSS sampled, the resident kB by kind of mapping: shared
libraries and the executable (file-backed), the model's parameters (the
largest anonymous mapping, with any large buffer the kernel merged into it),
the main heap, glibc's other arenas (64 MB
reservations: ZeroMQ's I/O thread allocates incoming messages there),
OpenBLAS's GEMM buffer (its 128 MB reservation) and the rest.  The idle line
is the daemon after loading the model, before any frame.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))
import bench_pydaemon as BP  # noqa: E402
import fldtest as T  # noqa: E402

MB = 1024


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def breakdown(pid):
    """Resident kB by kind of mapping."""
    maps = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            p = line.split()
            if "-" in p[0] and not p[0].endswith(":"):
                lo, hi = (int(x, 16) for x in p[0].split("-"))
                cur = [hi - lo, p[5] if len(p) > 5 else "", 0, lo]
                maps.append(cur)
            elif p[0] == "Rss:":
                cur[2] = int(p[1])
    kinds = {"file": 0, "params": 0, "heap": 0, "arenas": 0, "openblas": 0, "other": 0}
    anon = [m for m in maps if not m[1]]
    params = max(anon, key=lambda m: m[2]) if anon else None
    for m in maps:
        size, name, rss, lo = m
        if name.startswith("/"):
            kinds["file"] += rss
        elif name == "[heap]":
            kinds["heap"] += rss
        elif m is params:
            kinds["params"] += rss
        elif lo % (64 << 20) == 0 and size <= 64 << 20:
            kinds["arenas"] += rss
        elif size == 128 << 20:
            kinds["openblas"] += rss
        else:
            kinds["other"] += rss
    return kinds


def fmt(kinds):
    return ", ".join(f"{k} {v / MB:.1f}" for k, v in kinds.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    model = os.path.join(build, "tests", "daemon", "daemon_test.model")
    tmp = tempfile.mkdtemp(prefix="fl-mem-")
    csv = os.path.join(tmp, "sim.csv")
    subprocess.run([os.path.join(build, "tools", "faultline"), "simulate", "--rows", "700",
                    "--seed", "3", "--anomalies", "0", "--out", csv],
                   check=True, capture_output=True)
    pb = T.load_proto(tmp)
    fr = BP.Frames(pb, T.Table(csv, T.modalities(BP.CONFIG)))
    start = BP.start
    peaks = {}

    def watched(*args, **kw):
        d, ports = start(*args, **kw)
        pid = d.p.pid
        peaks[pid] = (0, None, breakdown(pid), status(pid, "VmRSS"))

        def watch():
            while d.p.poll() is None:
                try:
                    rss = status(pid, "VmRSS")
                    if rss > peaks[pid][0]:
                        peaks[pid] = (rss, breakdown(pid)) + peaks[pid][2:]
                except (OSError, IndexError):
                    break
                time.sleep(0.01)
        threading.Thread(target=watch, daemon=True).start()
        return d, ports

    BP.start = watched
    print("MB; sampled peak VmRSS by kind of mapping", flush=True)
    for r in range(a.runs):
        for streams, per in ((1, 2000), (64, 40)):
            before = set(peaks)
            fps, hwm = BP.throughput("c", build, model, tmp, fr, streams, per)
            pid = (set(peaks) - before).pop()
            rss, kinds, idle, idle_rss = peaks[pid]
            if r == 0 and streams == 1:
                print(f"idle after loading: VmRSS {idle_rss / MB:.1f} ({fmt(idle)})")
            print(f"stride 1, {streams} stream{'s' if streams > 1 else ''}, burst: VmHWM "
                  f"{hwm / MB:.1f}, peak VmRSS {rss / MB:.1f} ({fmt(kinds)}); {fps:,.0f} frames/s",
                  flush=True)
        before = set(peaks)
        p50, p99, sent, n, hwm = BP.latency("c", build, model, tmp, fr, 10, 10000, 3)
        pid = (set(peaks) - before).pop()
        rss, kinds = peaks[pid][:2]
        print(f"10k frames/s paced, 10 streams, stride 15: VmHWM {hwm / MB:.1f}, peak VmRSS "
              f"{rss / MB:.1f} ({fmt(kinds)}); p99 {p99:.2f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
