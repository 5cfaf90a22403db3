#!/usr/bin/env python3
"""Soak test of faultlined: steady load on loopback for --seconds.

usage: soak.py FAULTLINED MODEL EPISODE_CSV CONFIG [--seconds 60] [--rate 400]
                [--rss-bound-kb 4096]

Load: three streams at --rate frames/s in total (the episode's rows, in
order), mixed with malformed frames (about 6 in 100: undecodable, bad stream
id, unknown modality, non-finite sample, oversize, duplicate sequence) and
frames of streams beyond [input] max_streams (dropped).  Meanwhile the
publisher restarts every 7 s (after the daemon has taken every frame it sent,
so that no frame is lost in flight or reordered between connections), a slow
subscriber with a small queue reads reports at 20 per second, and the daemon
gets SIGHUP (a full configuration and model reload) every 3 s.

Asserts at the end, from /metrics:
- frames received = frames sent, and received = processed + rejected (every
  reason) + dropped, exactly; each reject reason and the drops equal what was
  sent of them; every reload succeeded;
- resident memory flat after warm-up (the first quarter, at least 20 s: the
  reloads' heap settles): the median of the last third of the samples after
  warm-up exceeds the median of the first third by at most --rss-bound-kb
  (default 4 MiB).  Medians, because a reload holds two models for a moment
  and a 1 Hz sample may catch that peak; a leak moves the median;
- file descriptors flat: after warm-up they stay within 6 of the warm-up's
  last count (publisher and scrape connections come and go) and end within 2.
"""
import argparse
import math
import os
import signal
import sys
import tempfile
import threading
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
ap.add_argument("--seconds", type=float, default=60)
ap.add_argument("--rate", type=float, default=400)
ap.add_argument("--rss-bound-kb", type=int, default=4096)
ap.add_argument("--hup-every", type=float, default=3.0, help="seconds between SIGHUPs, 0: none")
a = ap.parse_args()

TMP = tempfile.mkdtemp(prefix="fld-soak-")
pb = T.load_proto(TMP)
MODS = T.modalities(a.config)
tab = T.Table(a.episode, MODS)
ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
cfg = os.path.join(TMP, "soak.ini")
T.write_config(cfg, a.config, {
    "model": {"file": os.path.abspath(a.model)},
    "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "bind": 1, "max_streams": 3,
              "max_message_bytes": 4096},
    "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}", "sndhwm": 50},
    "metrics": {"listen": f"127.0.0.1:{ports['http']}", "status_interval": 1},
    "log": {"level": "notice", "limit_interval": 5},
})
d = T.Daemon(a.faultlined, cfg)
d.wait_http(ports["http"])
pid = d.p.pid


def rss_kb():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def nfds():
    return len(os.listdir(f"/proc/{pid}/fd"))


stop = threading.Event()
slow_got = [0]


def slow_subscriber():
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 10)
    s.setsockopt(zmq.SUBSCRIBE, b"report/")
    s.connect(f"tcp://127.0.0.1:{ports['out']}")
    while not stop.is_set():
        if s.poll(100):
            s.recv_multipart()
            slow_got[0] += 1
            time.sleep(0.05)
    s.close(linger=0)


def hupper():
    while a.hup_every > 0 and not stop.wait(a.hup_every):
        d.signal(signal.SIGHUP)


threading.Thread(target=slow_subscriber, daemon=True).start()
threading.Thread(target=hupper, daemon=True).start()

ctx = zmq.Context()
pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
check(ok, "soak: the daemon subscribes")
sent = {"valid": 0}
expect = {}
seq = {f"s{i}": 0 for i in range(3)}
last = {}


def send(payload, kind):
    """kind: None for a valid frame, else the reject reason or "dropped".
    The topic names the frame's stream, as the daemon requires."""
    f = pb.Frame()
    try:
        f.ParseFromString(payload)
    except Exception:  # the undecodable and oversize payloads
        pass
    pub.send_multipart([b"frame/" + (f.stream or "x").encode(), payload])
    key = kind or "valid"
    sent[key] = sent.get(key, 0) + 1
    if kind and kind != "dropped":
        expect[kind] = expect.get(kind, 0) + 1


def total_sent():
    return sum(sent.values())


def received():
    return T.metrics(ports["http"])[0].get("faultline_frames_received_total", 0)


def drain(timeout=30):
    t_end = time.time() + timeout
    while time.time() < t_end:
        if received() >= total_sent():
            return True
        time.sleep(0.05)
    return False


samples = []  # (t, rss kB, fds)
t0 = time.time()
warm = max(20.0, a.seconds / 4)
next_restart = t0 + 7
next_sample = t0
n = 0
restarts = 0
period = 1.0 / a.rate
t_next = t0
while time.time() - t0 < a.seconds:
    now = time.time()
    if now >= next_sample:
        samples.append((now - t0, rss_kb(), nfds()))
        next_sample += 1.0
    if now >= next_restart:
        check(drain(), "soak: the daemon keeps up before a publisher restart")
        pub.close(linger=1000)
        pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
        check(ok, "soak: a restarted publisher is subscribed")
        restarts += 1
        next_restart = time.time() + 7
        t_next = time.time()
    if now < t_next:
        time.sleep(min(t_next - now, 0.01))
        continue
    t_next += period
    n += 1
    st = f"s{n % 3}"
    k = n % 100
    if k == 10:
        send(b"\xff\xff\xff\xff not a frame", "undecodable")
    elif k == 25:
        send(tab.frame(pb, "bad stream!", 1, 0).SerializeToString(), "bad_stream")
    elif k == 40:
        f = tab.frame(pb, st, seq[st] + 1, 0)
        f.blocks[0].modality = "sonar"
        send(f.SerializeToString(), "unknown_modality")
    elif k == 55:
        f = tab.frame(pb, st, seq[st] + 1, 0)
        f.blocks[1].samples[0] = math.inf
        send(f.SerializeToString(), "nonfinite")
    elif k == 70:
        send(b"\x0a" + b"x" * 5000, "oversize")
    elif k == 85 and st in last:
        send(last[st], "duplicate")
    elif k == 95:
        send(tab.frame(pb, f"extra{n % 7}", n, 0).SerializeToString(), "dropped")
    else:
        seq[st] += 1
        row = seq[st] % len(tab.rows)
        payload = tab.frame(pb, st, seq[st], row).SerializeToString()
        last[st] = payload
        send(payload, None)

check(drain(), "soak: the daemon takes every frame sent")
stop.set()
time.sleep(0.5)
samples.append((time.time() - t0, rss_kb(), nfds()))
m, text = T.metrics(ports["http"])
rej = {k.split('"')[1]: v for k, v in m.items() if k.startswith("faultline_frames_rejected_total")}
drop = sum(v for k, v in m.items() if k.startswith("faultline_frames_dropped_total"))
proc = m["faultline_frames_processed_total"]
recv = m["faultline_frames_received_total"]
n_sent = total_sent()
reloads_ok = m.get('faultline_reloads_total{result="success"}', 0)
print(f"soak: {a.seconds:.0f} s, {n_sent} frames sent ({n_sent / a.seconds:.0f}/s), "
      f"{recv:.0f} received, {proc:.0f} processed, {sum(rej.values()):.0f} rejected {rej}, "
      f"{drop:.0f} dropped; {restarts} publisher restarts, "
      f"{reloads_ok:.0f} reloads, "
      f"{m.get('faultline_reports_total', 0):.0f} reports, slow subscriber read {slow_got[0]}")
check(recv == n_sent, f"soak: received {recv} = sent {n_sent}")
check(proc + sum(rej.values()) + drop == recv,
      f"soak: processed + rejected + dropped = received ({proc} + {sum(rej.values())} + {drop} "
      f"vs {recv})")
check(proc == sent["valid"], f"soak: processed {proc} = valid frames sent {sent['valid']}")
for reason, want in expect.items():
    check(rej.get(reason, 0) == want, f"soak: rejected {reason} {rej.get(reason, 0)} = sent {want}")
check(drop == sent.get("dropped", 0), f"soak: dropped {drop} = sent {sent.get('dropped', 0)}")
check(m.get('faultline_reloads_total{result="failure"}', 0) == 0, "soak: every reload succeeded")
check(a.hup_every <= 0 or reloads_ok >= a.seconds / a.hup_every - 2,
      "soak: SIGHUP every 3 s reloaded")
after = [s for s in samples if s[0] >= warm]
base = [s for s in samples if s[0] < warm][-1]
rss_max = max(s[1] for s in after)
third = max(1, len(after) // 3)
med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
rss_early, rss_late = med([s[1] for s in after[:third]]), med([s[1] for s in after[-third:]])
fd_lo, fd_hi = min(s[2] for s in after), max(s[2] for s in after)
print(f"soak: RSS median {rss_early} kB after warm-up, {rss_late} kB at the end "
      f"({rss_late - rss_early:+d} kB, bound {a.rss_bound_kb} kB), peak {rss_max} kB; "
      f"fds {base[2]} after warm-up, {fd_lo}..{fd_hi} later, {samples[-1][2]} at the end")
if os.environ.get("FAULTLINE_SANITIZED") == "1":
    # tests/run.sh's ASan run: AddressSanitizer's quarantine holds freed
    # memory (up to 256 MB) on purpose, so resident memory is not flat there;
    # LeakSanitizer checks the daemon's exit instead.
    print("soak: resident memory not bounded under AddressSanitizer (FAULTLINE_SANITIZED=1)")
else:
    check(rss_late - rss_early <= a.rss_bound_kb,
          f"soak: resident memory flat: {rss_late - rss_early:+d} kB > {a.rss_bound_kb} kB")
check(fd_hi - base[2] <= 6 and base[2] - fd_lo <= 6, f"soak: fds flat ({base[2]}: {fd_lo}..{fd_hi})")
check(abs(samples[-1][2] - base[2]) <= 2, f"soak: fds at the end {samples[-1][2]} vs {base[2]}")
print("soak: RSS kB every 5 s:", " ".join(str(s[1]) for s in samples[::5]))
status, body = T.http_get(ports["http"], "/healthz")
check(status == 200, "soak: healthy at the end")
pub.close(linger=0)
ctx.destroy(linger=0)
check(d.stop() == 0, "soak: clean exit")
T.finish("soak")
