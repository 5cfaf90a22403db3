#!/usr/bin/env python3
"""faultlined under valgrind memcheck: start, a short stream, SIGHUP (twice),
a scrape, stop.  Passes when valgrind reports no error and nothing
definitely or indirectly lost.

usage: memcheck.py FAULTLINED MODEL EPISODE_CSV CONFIG [--frames 150]

Skipped (exit 77) when valgrind is not installed.  Reachable blocks at exit
(libzmq's and OpenBLAS's per-process state) are not leaks and not counted.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("faultlined")
ap.add_argument("model")
ap.add_argument("episode")
ap.add_argument("config")
ap.add_argument("--frames", type=int, default=150)
a = ap.parse_args()
vg = shutil.which("valgrind")
if not vg:
    print("valgrind is not installed: skipped")
    sys.exit(77)

TMP = tempfile.mkdtemp(prefix="fld-memcheck-")
pb = T.load_proto(TMP)
tab = T.Table(a.episode, T.modalities(a.config))
ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
cfg = os.path.join(TMP, "memcheck.ini")
T.write_config(cfg, a.config, {
    "model": {"file": os.path.abspath(a.model)},
    "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "bind": 1, "max_streams": 2},
    "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}"},
    "metrics": {"listen": f"127.0.0.1:{ports['http']}"},
    "log": {"level": "info"},
})
vlog = os.path.join(TMP, "valgrind.log")
env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
log = open(os.path.join(TMP, "daemon.log"), "w")
t0 = time.time()
p = T.spawn([vg, "--tool=memcheck", "--leak-check=full",
             "--show-leak-kinds=definite,indirect",
             "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
             "--log-file=" + vlog, a.faultlined, "--config", cfg],
            stdout=log, stderr=log, env=env)


def metrics():
    """/metrics, waiting out a loop busy with a reload under valgrind."""
    for _ in range(60):
        try:
            return T.metrics(ports["http"])[0]
        except OSError:
            time.sleep(1)
    raise RuntimeError("no answer on /metrics for a minute")


def wait_metric(key, pred, timeout=240):
    t_end = time.time() + timeout
    v = None
    while time.time() < t_end:
        v = metrics().get(key)
        if v is not None and pred(v):
            return v
        time.sleep(0.2)
    return v


class D:  # what fldtest's helpers need of a daemon
    p = p

    def logtext(self):
        with open(log.name) as f:
            return f.read()


T.Daemon.wait_http(D(), ports["http"], timeout=240)
print(f"memcheck: up after {time.time() - t0:.1f} s")
ctx = zmq.Context()
sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}", wait=60)
check(ok, "memcheck: the daemon subscribes")
sent = 0
for i in range(a.frames):
    pub.send_multipart([b"frame/m1", tab.frame(pb, "m1", i, i).SerializeToString()])
    sent += 1
    if i == a.frames // 2:
        # Malformed frames and a stream over the cap walk the reject paths.
        pub.send_multipart([b"frame/x", b"\xff\xfe garbage"])
        pub.send_multipart([b"frame/m2", tab.frame(pb, "m2", 0, 0).SerializeToString()])
        pub.send_multipart([b"frame/m3", tab.frame(pb, "m3", 0, 0).SerializeToString()])
        sent += 3
v = wait_metric("faultline_frames_received_total", lambda v: v >= sent)
check(v == sent, f"memcheck: {sent} frames received ({v})")
for k in range(2):
    before = metrics().get('faultline_reloads_total{result="success"}', 0)
    p.send_signal(signal.SIGHUP)
    wait_metric('faultline_reloads_total{result="success"}', lambda v: v > before)
# A few more frames after the reloads: the streams survived them.
for i in range(a.frames, a.frames + 20):
    pub.send_multipart([b"frame/m1", tab.frame(pb, "m1", i, i).SerializeToString()])
    sent += 1
wait_metric("faultline_frames_received_total", lambda v: v >= sent)
m = metrics()
reports = m.get("faultline_reports_total", 0)
check(reports >= 3, f"memcheck: windows were scored and reported ({reports})")
print(f"memcheck: {sent} frames sent, {m.get('faultline_frames_processed_total', 0):.0f} processed, "
      f"{reports:.0f} reports, 2 reloads")
check(m.get('faultline_reloads_total{result="success"}', 0) == 2, "memcheck: two reloads")
pub.close(linger=0)
sub.close(linger=0)
ctx.destroy(linger=0)
p.send_signal(signal.SIGTERM)
try:
    rc = p.wait(600)
except subprocess.TimeoutExpired:
    p.kill()
    rc = p.wait()
log.close()
text = open(vlog).read()
print(f"memcheck: exit {rc} after {time.time() - t0:.1f} s")
summary = [ln.split("== ", 1)[-1] for ln in text.splitlines()
           if re.search(r"(definitely|indirectly|possibly) lost:|ERROR SUMMARY|still reachable:|"
                     r"in use at exit|total heap usage|All heap blocks", ln)]
print("\n".join(summary))


def lost(kind):
    mm = re.search(kind + r" lost: ([\d,]+) bytes", text)
    return int(mm.group(1).replace(",", "")) if mm else 0


check("ERROR SUMMARY: 0 errors" in text, "memcheck: no memcheck errors")
check(lost("definitely") == 0, f"memcheck: definitely lost {lost('definitely')} bytes")
check(lost("indirectly") == 0, f"memcheck: indirectly lost {lost('indirectly')} bytes")
check(rc == 0, f"memcheck: clean exit under valgrind (exit {rc})")
if T.failures:
    print(text[-6000:], file=sys.stderr)
T.finish("memcheck")
