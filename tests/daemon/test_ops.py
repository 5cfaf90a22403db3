#!/usr/bin/python3
"""Process tests of running faultlined for weeks on a gateway: the real
daemon on loopback, fed by pyzmq publishers, read over ZeroMQ and HTTP.

usage: test_ops.py SCENARIO FAULTLINED MODEL EPISODE_CSV CONFIG

SCENARIO is one of:
  restart  a publisher that restarts: the same 300 frames replayed twice
           start the stream afresh (counted, logged once, reports 0.. again),
           not 299 `old` and 1 `duplicate`; a new Frame.epoch with a seq only
           a little back starts it afresh too; one frame with seq = 2^63 is
           rejected as `seq_jump` and the real frames after it are processed
  evict    streams idle for [input] stream_idle are evicted (counted, their
           series gone), so junk streams that filled [input] max_streams no
           longer keep a real stream out; a stream that keeps sending stays
  config   the daemon's [modality.*] and [detect] against its model: a channel
           removed, or [detect] quantile = 0.5, is refused by --check-config,
           at start and on SIGHUP (the old model kept) with the difference
           named and `faultline calibrate` suggested; [detect] margin takes
           effect (the thresholds scaled)
  health   /readyz says "no frames for N s" while /healthz stays 200; /streams
           and the per-stream gauges name the stream that alarms and its
           faulty modality, at most max_streams series; a frame whose topic
           names another stream than its payload is rejected as
           `topic_mismatch`
"""
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

SCENARIO, FLD, MODEL, EPISODE, CONFIG = sys.argv[1:6]
FLD, MODEL, EPISODE, CONFIG = map(os.path.abspath, (FLD, MODEL, EPISODE, CONFIG))
TMP = tempfile.mkdtemp(prefix="fld-ops-" + SCENARIO + "-")
pb = T.load_proto(TMP)
MODS = T.modalities(CONFIG)
W, STRIDE = 60, 15


def start(name, **sections):
    sections.setdefault("output", {}).setdefault("stride", STRIDE)
    path, ports = T.daemon_config(TMP, name, MODEL, CONFIG, **sections)
    d = T.Daemon(FLD, path)
    d.wait_http(ports["http"])
    return d, ports


def connect(ports, reports=False):
    ctx = zmq.Context()
    sub = None
    if reports:
        sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
        v = T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
        check(v == 1, f"{SCENARIO}: the report subscriber is connected")
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    check(ok, f"{SCENARIO}: the daemon subscribes")
    return ctx, pub, sub


def send(pub, f, topic=None):
    pub.send_multipart([topic or f"frame/{f.stream}".encode(), f.SerializeToString()])


def wait_received(ports, n):
    v = T.wait_metric(ports["http"], "faultline_frames_received_total", lambda v: v >= n,
                      timeout=60)
    check(v == n, f"{SCENARIO}: {n} frames received (got {v})")


def rej(m, reason):
    return m.get(f'faultline_frames_rejected_total{{reason="{reason}"}}', 0)


def scenario_restart():
    tab = T.Table(EPISODE, MODS)
    d, ports = start("restart")
    ctx, pub, sub = connect(ports, reports=True)
    # The same recording twice, as a publisher that restarted sends it.
    for run in range(2):
        for i in range(300):
            send(pub, tab.frame(pb, "pump", i, i))
    wait_received(ports, 600)
    k = (300 - W) // STRIDE + 1
    reps = [r for _, r in T.collect(sub, pb, 2 * k, timeout=60)]
    m, _ = T.metrics(ports["http"])
    check(rej(m, "old") == 0 and rej(m, "duplicate") == 0,
          f"restart: the second run is not rejected (old {rej(m, 'old')}, "
          f"duplicate {rej(m, 'duplicate')})")
    check(m.get("faultline_frames_processed_total") == 600, "restart: 600 frames processed")
    check(m.get("faultline_stream_restarts_total") == 1, "restart: one stream restart counted")
    check(len(reps) == 2 * k, f"restart: {len(reps)} reports, {2 * k} expected")
    check([r.seq for r in reps] == list(range(k)) * 2 and
          [r.end_seq for r in reps] == [W - 1 + STRIDE * i for i in range(k)] * 2,
          "restart: the second run's reports start a window in, numbered from 0 again")
    lines = [ln for ln in d.logtext().splitlines() if "restarted" in ln]
    check(len(lines) == 1 and '"pump"' in lines[0], f"restart: logged once: {lines}")

    # A publisher with an epoch: a restart whose seq goes back less than a
    # window is still a new session.
    for i in range(100):
        f = tab.frame(pb, "gw", i, i)
        f.epoch = 111
        send(pub, f)
    for i in range(50, 150):
        f = tab.frame(pb, "gw", i, i)
        f.epoch = 222
        send(pub, f)
    wait_received(ports, 800)
    m, _ = T.metrics(ports["http"])
    check(m.get("faultline_stream_restarts_total") == 2 and rej(m, "old") == 0,
          "restart: a new epoch starts the stream afresh")
    check(m.get("faultline_frames_processed_total") == 800, "restart: 800 frames processed")

    # A sequence jump beyond [input] max_seq_jump is a bad frame, not 9.2e18
    # lost ticks that make every later frame old.
    for i in range(100):
        send(pub, tab.frame(pb, "jump", i, i))
    send(pub, tab.frame(pb, "jump", 2**63, 100, ts=100 * 10**9))
    for i in range(100, 200):
        send(pub, tab.frame(pb, "jump", i, i))
    wait_received(ports, 1001)
    m, _ = T.metrics(ports["http"])
    check(rej(m, "seq_jump") == 1, f"restart: the jump is rejected as seq_jump ({rej(m, 'seq_jump')})")
    check(m.get("faultline_sequence_gap_ticks_total") == 0,
          f"restart: no gap ticks counted ({m.get('faultline_sequence_gap_ticks_total')})")
    check(m.get("faultline_frames_processed_total") == 1000 and rej(m, "old") == 0,
          "restart: the frames after the jump are processed")
    pub.close(linger=0)
    sub.close(linger=0)
    ctx.term()
    check(d.stop() == 0, "restart: the daemon stops cleanly")


def scenario_evict():
    tab = T.Table(EPISODE, MODS)
    idle_min = 0.025  # 1.5 s
    d, ports = start("evict", input={"max_streams": 4, "stream_idle": idle_min})
    ctx, pub, _ = connect(ports)
    # Three junk streams of one frame each and one that keeps sending fill
    # the cap.
    for j in range(3):
        send(pub, tab.frame(pb, f"junk{j}", 0, 0))
    n = 3
    t_end = time.time() + 4 * idle_min * 60
    seq = 0
    while time.time() < t_end:
        send(pub, tab.frame(pb, "steady", seq, seq))
        seq += 1
        n += 1
        time.sleep(0.2)
    wait_received(ports, n)
    m, _ = T.metrics(ports["http"])
    check(m.get("faultline_streams_evicted_total") == 3,
          f"evict: the three idle streams are evicted ({m.get('faultline_streams_evicted_total')})")
    check(m.get("faultline_streams") == 1 and
          'faultline_stream_last_frame_age_seconds{stream="steady"}' in m and
          not any('stream="junk' in k for k in m),
          "evict: the sending stream stays, the evicted ones' series are gone")
    # The real stream now gets a slot.
    for i in range(100):
        send(pub, tab.frame(pb, "pump-real", i, i))
    wait_received(ports, n + 100)
    m, _ = T.metrics(ports["http"])
    check(m.get('faultline_frames_dropped_total{reason="stream_limit"}') == 0,
          "evict: pump-real is not dropped")
    _, body = T.http_get(ports["http"], "/streams")
    names = [s["stream"] for s in json.loads(body)["streams"]]
    check(names == ["steady", "pump-real"], f"evict: /streams lists {names}")
    check(len([ln for ln in d.logtext().splitlines() if "evicted" in ln]) == 3,
          "evict: each eviction logged once")
    pub.close(linger=0)
    ctx.term()
    check(d.stop() == 0, "evict: the daemon stops cleanly")


def scenario_health():
    tab = T.Table(EPISODE, MODS)
    stale = 2
    d, ports = start("health", input={"max_streams": 2}, metrics={"stale_after": stale})
    ctx, pub, _ = connect(ports)
    time.sleep(stale + 0.5)
    st, body = http_status(ports, "/readyz")
    check(st == 503 and body.startswith("no frames for") and "none since start" in body,
          f"health: /readyz before any frame: {st} {body!r}")
    st, body = http_status(ports, "/healthz")
    check(st == 200 and body == "ok\n", "health: /healthz stays 200 (the process serves)")

    # Two streams, a fault injected into pump-bad's hydraulic pressure.
    j = tab.column("pressure")
    vals = [r[j] for r in tab.rows if not math.isnan(r[j])]  # as test_daemon.py
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    mi = [name for name, _, _ in MODS].index("hydraulic")
    _, rate, chans = MODS[mi]
    c = chans.index("pressure")
    for i in range(520):
        send(pub, tab.frame(pb, "pump-ok", i, i))
        f = tab.frame(pb, "pump-bad", i, i)
        if i >= 470:  # the last windows (ends 479, 494, 509) in the fault
            for q in range(rate):
                f.blocks[mi].samples[q * len(chans) + c] += 6 * sd
        send(pub, f)
    # A third stream over the cap, and a frame whose topic names another
    # stream than its payload.
    send(pub, tab.frame(pb, "pump-3", 0, 0))
    send(pub, tab.frame(pb, "other1", 0, 0), topic=b"frame/pump-ok")
    wait_received(ports, 1042)
    st, body = http_status(ports, "/readyz")
    check(st == 200 and body == "ready\n", f"health: /readyz while frames arrive: {st} {body!r}")
    m, text = T.metrics(ports["http"])
    check(rej(m, "topic_mismatch") == 1, "health: the topic/payload mismatch is rejected")
    check(m.get('faultline_stream_anomaly{stream="pump-bad"}') == 1 and
          m.get('faultline_stream_anomaly{stream="pump-ok"}') == 0,
          "health: the per-stream anomaly gauge names the alarming stream")
    check(text.count("faultline_stream_anomaly{") == 2 and
          text.count("faultline_stream_last_frame_age_seconds{") == 2,
          "health: at most max_streams per-stream series")
    _, body = T.http_get(ports["http"], "/streams")
    doc = json.loads(body)
    by = {s["stream"]: s for s in doc["streams"]}
    check(doc["count"] == 2 and doc["limit"] == 2 and set(by) == {"pump-ok", "pump-bad"},
          f"health: /streams lists the two streams held: {sorted(by)}")
    k = (520 - W) // STRIDE + 1
    b, o = by.get("pump-bad", {}), by.get("pump-ok", {})
    check(b.get("anomaly") is True and b.get("faulty_modality") == "hydraulic" and
          o.get("anomaly") is False and o.get("faulty_modality") == "",
          f"health: /streams flags pump-bad (hydraulic), not pump-ok: {b} {o}")
    check(b.get("last_seq") == 519 and b.get("frames") == 520 and b.get("windows") == k and
          0 <= b.get("seconds_since_last_frame", -1) < stale and
          b.get("last_score", 0) > o.get("last_score", 1),
          f"health: last seq, frames, windows, age and score: {b}")
    time.sleep(stale + 0.5)
    st, body = http_status(ports, "/readyz")
    check(st == 503 and body.startswith("no frames for") and "since start" not in body,
          f"health: /readyz once frames stop: {st} {body!r}")
    m, _ = T.metrics(ports["http"])
    check(m.get("faultline_last_frame_age_seconds", 0) > stale and
          m.get('faultline_stream_last_frame_age_seconds{stream="pump-ok"}', 0) > stale,
          "health: the frame age gauges grow while nothing arrives")
    st, _ = http_status(ports, "/healthz")
    check(st == 200, "health: /healthz still 200")
    pub.close(linger=0)
    ctx.term()
    check(d.stop() == 0, "health: the daemon stops cleanly")


def scenario_config():
    import signal
    import subprocess
    tab = T.Table(EPISODE, MODS)

    def cfg(name, **sections):
        path = os.path.join(TMP, name + ".ini")
        over = {"model": {"file": MODEL}}
        over.update(sections)
        T.write_config(path, CONFIG, over)
        return path

    def check_config(path):
        p = subprocess.run([FLD, "--check-config", path], capture_output=True, text=True,
                           timeout=60)
        return p.returncode, p.stdout + p.stderr

    rc, out = check_config(cfg("plain"))
    check(rc == 0 and "ok (model" in out, f"config: the shipped keys pass: {out}")
    thr = float(out.rsplit("threshold ", 1)[1].rstrip(")\n"))
    rc, out = check_config(cfg("quantile", detect={"quantile": 0.5}))
    check(rc == 1 and "[detect] quantile = 0.5 differs from the model's 0.99" in out and
          "faultline calibrate" in out, f"config: quantile = 0.5 is refused: {out}")
    rc, out = check_config(cfg("channel", **{"modality.hydraulic": {"channels": "pressure"}}))
    check(rc == 1 and "[modality.*]" in out and "hydraulic" in out,
          f"config: a channel removed from a modality is refused: {out}")
    rc, out = check_config(cfg("margin", detect={"margin": 2.0}))
    got = float(out.rsplit("threshold ", 1)[1].rstrip(")\n")) if rc == 0 else 0
    check(rc == 0 and math.isclose(got, 2 * thr, rel_tol=1e-3),
          f"config: margin = 2 doubles the threshold ({thr} -> {got}): {out}")
    # At start: refused, exit status 1.
    path = cfg("start", detect={"quantile": 0.5}, input={"endpoint": "tcp://127.0.0.1:1"},
               output={"endpoint": "tcp://127.0.0.1:2"}, metrics={"listen": ""})
    p = T.spawn([FLD, "--config", path], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it serves: the key was ignored
        p.kill()
        out, _ = p.communicate()
    check(p.returncode == 1 and "quantile" in out, f"config: refused at start: {out}")
    # On SIGHUP: refused, the daemon serves on with its model.
    d, ports = start("reload")
    ctx, pub, _ = connect(ports)
    with open(d.config, "a") as f:
        f.write("\n[detect]\nquantile = 0.5\n")
    d.signal(signal.SIGHUP)
    v = T.wait_metric(ports["http"], 'faultline_reloads_total{result="failure"}', lambda v: v >= 1)
    check(v == 1, "config: the reload with quantile = 0.5 fails")
    check("quantile" in d.logtext() and "faultline calibrate" in d.logtext(),
          "config: the reload's refusal says why")
    for i in range(100):
        send(pub, tab.frame(pb, "after", i, i))
    wait_received(ports, 100)
    m, _ = T.metrics(ports["http"])
    check(m.get("faultline_frames_processed_total") == 100 and
          math.isclose(m.get("faultline_model_threshold", 0), thr, rel_tol=1e-3),
          "config: still serving with the model's threshold")
    pub.close(linger=0)
    ctx.term()
    check(d.stop() == 0, "config: the daemon stops cleanly")


def http_status(ports, path):
    import urllib.error
    try:
        return T.http_get(ports["http"], path)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


{"restart": scenario_restart, "evict": scenario_evict, "config": scenario_config,
 "health": scenario_health}[SCENARIO]()
T.finish("ops " + SCENARIO)
