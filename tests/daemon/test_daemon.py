#!/usr/bin/python3
"""Process tests of faultlined: the real daemon on loopback, fed and read by
Python (pyzmq, protobuf classes generated with protoc) and by the C tools.

usage: test_daemon.py SCENARIO FAULTLINED FAULTLINE MODEL EPISODE_CSV CONFIG

SCENARIO is one of:
  stream     a burst of an unseen clean run with an offset fault injected in
             hydraulic pressure, sent faster than the daemon reads with a tiny
             drain budget (a daemon that waited for another ZMQ_FD edge would
             hang here): a report for every window, in sequence, the fault
             flagged in hydraulic, corrected samples present and gated; PULL
             input with the daemon connecting
  tools      the same episode through `faultline replay --inject` and
             `faultline tail --json`
  reject     malformed frames of every kind: each counted under its reason,
             every frame accounted for, the daemon alive; promtool accepts
             /metrics
  lifecycle  a NOTIFY_SOCKET listener sees READY, WATCHDOG, RELOADING with
             MONOTONIC_USEC, STOPPING; SIGHUP with a broken config keeps the
             daemon serving with the old model; SIGTERM drains and exits 0
  curve      CurveZMQ: an authorised publisher gets through, a stranger and a
             plaintext publisher do not
  correct    faults that outlast several windows (an offset on pressure, flow
             missing) streamed with a SIGHUP reload in the middle: every
             report's corrected values and their uncertainty are what
             `faultline score` writes for the same rows
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

SCENARIO, FLD, FL, MODEL, EPISODE, CONFIG = sys.argv[1:7]
FLD, FL, MODEL, EPISODE, CONFIG = map(os.path.abspath, (FLD, FL, MODEL, EPISODE, CONFIG))
TMP = tempfile.mkdtemp(prefix="fld-" + SCENARIO + "-")
pb = T.load_proto(TMP)
MODS = T.modalities(CONFIG)
W, STRIDE = 60, 15
FAULT_AT, FAULT_ROWS, FAULT_SD = 400, 120, 6.0


def make_config(name, **sections):
    over = {"output": {"stride": STRIDE}, "metrics": {"status_interval": 0.5}}
    for sec, kv in sections.items():
        over.setdefault(sec, {}).update(kv)
    path, ports = T.daemon_config(TMP, name, MODEL, CONFIG, **over)
    return path, ports


def start(name, env=None, **sections):
    path, ports = make_config(name, **sections)
    d = T.Daemon(FLD, path, env=env)
    d.wait_http(ports["http"])
    return d, path, ports


def faulty_table():
    """The episode with +FAULT_SD sd on pressure over the fault rows, and
    the clean pressure for comparison."""
    tab = T.Table(EPISODE, MODS)
    j = tab.column("pressure")
    vals = [r[j] for r in tab.rows]
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    clean = list(vals)
    for r in range(FAULT_AT, FAULT_AT + FAULT_ROWS):
        tab.rows[r][j] += FAULT_SD * sd
    return tab, clean, sd


def expected_windows(n):
    return (n - W) // STRIDE + 1


def check_reports(reps, n, stream, what, clean=None, tab=None, sd=None):
    """The assertions every streaming scenario shares."""
    k = expected_windows(n)
    check(len(reps) == k, f"{what}: {len(reps)} reports for {k} windows")
    seqs = [r.seq for _, r in reps]
    check(seqs == list(range(len(reps))), f"{what}: report sequence numbers are 0..{k - 1}")
    check([r.end_seq for _, r in reps] == [W - 1 + STRIDE * i for i in range(len(reps))],
          f"{what}: window ends every {STRIDE} ticks from {W - 1}")
    check(all(t == "report/" + stream and r.stream == stream for t, r in reps),
          f"{what}: topic report/{stream}")
    # Corrected samples: the newest stride ticks of every modality.
    ok = all(len(m.corrected) == STRIDE * m.rate * m.channels and
             len(m.residuals) == m.channels for _, r in reps for m in r.modalities)
    check(ok, f"{what}: corrected samples (stride x rate x channels) and residuals present")
    check(all(r.latency_ns > 0 and r.model_version for _, r in reps),
          f"{what}: latency and model version set")
    # Flags: the fault's windows are those whose tail (15 ticks) overlaps it.
    in_fault = [r for _, r in reps if FAULT_AT + 10 <= r.end_seq < FAULT_AT + FAULT_ROWS]
    before = [r for _, r in reps if r.end_seq < FAULT_AT]
    hyd = [r for r in in_fault if r.anomaly and r.faulty_modality == "hydraulic"]
    check(len(hyd) >= len(in_fault) // 2,
          f"{what}: fault flagged in hydraulic in {len(hyd)} of {len(in_fault)} fault windows")
    mflags = [r for r in in_fault
              if any(m.modality == "hydraulic" and m.flag for m in r.modalities)]
    check(len(mflags) >= len(in_fault) // 2, f"{what}: hydraulic's own flag raised")
    false_alarms = sum(r.anomaly for r in before)
    check(false_alarms <= len(before) // 5,
          f"{what}: {false_alarms} false alarms in {len(before)} clean windows")
    if tab is None:
        return
    # Gating: a window at or below the threshold with no faulty channel
    # passes its input through (a window above it may replace channels
    # before the alarm is raised), and so does every sample whose
    # uncertainty is 0, in any window.
    bad = bad_u = 0
    for _, r in reps:
        for mi, m in enumerate(r.modalities):
            quiet = not any(m.channel_faulty) and r.score <= r.threshold
            C, rate = m.channels, m.rate
            cols = tab.idx[mi]
            for t in range(STRIDE):
                row = tab.rows[r.end_seq - STRIDE + 1 + t]
                for q in range(rate):
                    for c in range(C):
                        k = (t * rate + q) * C + c
                        same = math.isclose(row[cols[q * C + c]], m.corrected[k],
                                            rel_tol=1e-4, abs_tol=1e-4)
                        bad += quiet and not same
                        bad_u += len(m.uncertainty) > k and m.uncertainty[k] == 0 and not same
    check(bad == 0, f"{what}: healthy channels pass through unchanged ({bad} samples differ)")
    check(bad_u == 0, f"{what}: samples of uncertainty 0 are the input ({bad_u} differ)")
    # Correction: where pressure was replaced, the estimate is nearer the
    # clean signal than the faulty input was.
    j = tab.column("pressure")
    e_in = e_out = 0.0
    cnt = 0
    for _, r in reps:
        m = [m for m in r.modalities if m.modality == "hydraulic"][0]
        if not m.channel_faulty[0]:
            continue
        for t in range(STRIDE):
            row = r.end_seq - STRIDE + 1 + t
            if not (FAULT_AT <= row < FAULT_AT + FAULT_ROWS):
                continue
            e_in += abs(tab.rows[row][j] - clean[row])
            e_out += abs(m.corrected[t * m.channels + 0] - clean[row])
            cnt += 1
    check(cnt > 0, f"{what}: pressure replaced in some fault windows")
    if cnt:
        check(e_out < e_in,
              f"{what}: corrected pressure error {e_out / cnt / sd:.2f} sd vs input "
              f"{e_in / cnt / sd:.2f} sd")


def scenario_stream():
    tab, clean, sd = faulty_table()
    n = 660
    # A tiny drain budget: the burst below spans many budget-sized turns.
    d, cfg, ports = start("stream", input={"drain_budget": 8})
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    check(T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1) >= 1,
          "stream: the daemon sees the report subscription")
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    check(ok, "stream: the daemon subscribes to the publisher")
    # Everything at once, then silence: no later edge to rescue a daemon that
    # stopped draining early.
    frames = [tab.frame(pb, "plant-1", i, i).SerializeToString() for i in range(n)]
    for i, fr in enumerate(frames):
        pub.send_multipart([b"frame/plant-1", fr])
    reps = T.collect(sub, pb, expected_windows(n), timeout=60)
    check_reports(reps, n, "plant-1", "stream", clean, tab, sd)
    m, _ = T.metrics(ports["http"])
    check(m.get("faultline_frames_received_total") == n and
          m.get("faultline_frames_processed_total") == n, "stream: every frame processed")
    check(m.get("faultline_model_info{version=\"%s\"}" % reps[0][1].model_version) == 1,
          "stream: the reports' model version is the one in /metrics")
    check(m.get('faultline_anomalies_total{modality="hydraulic"}', 0) >= 1,
          "stream: anomalies counted under hydraulic")
    # A burst after silence on a second stream: the loop woke up again.
    for i in range(W):
        pub.send_multipart([b"frame/plant-2", tab.frame(pb, "plant-2", i, i).SerializeToString()])
    reps2 = T.collect(sub, pb, 1, timeout=30)
    check(len(reps2) == 1 and reps2[0][1].stream == "plant-2", "stream: a second burst is served")
    check(d.stop() == 0, "stream: clean exit")
    # PULL input, the daemon connecting to a bound PUSH; a batch_memory too
    # small for two windows cuts the batch to one window a model call.
    push_port = T.free_port()
    d, cfg, ports = start("pull", input={"type": "pull", "bind": 0,
                                         "endpoint": f"tcp://127.0.0.1:{push_port}"},
                          output={"batch_memory": 0.1})
    check("[output] batch 16 cut to 1" in d.logtext(),
          "pull: the batch is cut to what batch_memory holds")
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
    push, _ = T.publisher(ctx, f"tcp://127.0.0.1:{push_port}", bind=True, kind=zmq.PUSH)
    n2 = 120
    for i in range(n2):
        # PULL takes a bare payload as well as [topic][payload].
        fr = tab.frame(pb, "pull-1", i, i).SerializeToString()
        push.send(fr) if i % 2 else push.send_multipart([b"frame/pull-1", fr])
    reps = T.collect(sub, pb, expected_windows(n2), timeout=30)
    check(len(reps) == expected_windows(n2), f"pull: {len(reps)} reports for "
          f"{expected_windows(n2)} windows")
    check(d.stop() == 0, "pull: clean exit")
    # Parity with the offline scan: with stride 1 the daemon's window ending
    # at tick e scores, flags and corrects what `faultline score` writes for
    # row e (same causal windows, same hysteresis).
    n3 = 300
    csv = os.path.join(TMP, "parity.csv")
    with open(EPISODE) as f, open(csv, "w") as g:
        for i, line in enumerate(f):
            if i > n3:
                break
            g.write(line)
    # With a fault in it, so that gated correction is compared too.
    faulted = os.path.join(TMP, "parity_faulted.csv")
    subprocess.run([FL, "inject", "--in", csv, "--out", faulted, "--labels",
                    os.path.join(TMP, "parity_labels.csv"), "--fault", "offset", "--count", "1",
                    "--from", "150", "--config", CONFIG], check=True, capture_output=True)
    csv = faulted
    scored = os.path.join(TMP, "parity_scored.csv")
    subprocess.run([FL, "score", "--model", MODEL, "--in", csv, "--out", scored], check=True)
    head, rows = T.read_csv(scored)
    d, cfg, ports = start("parity", output={"stride": 1})
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
    pub, _ = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    tab3 = T.Table(csv, MODS)
    for i in range(n3):
        pub.send_multipart([b"frame/par", tab3.frame(pb, "par", i, i).SerializeToString()])
    reps = T.collect(sub, pb, n3 - W + 1, timeout=60)
    check(len(reps) == n3 - W + 1, f"parity: {len(reps)} reports for {n3 - W + 1} windows")
    js, ja = head.index("score"), head.index("anomaly")
    worst, flags, corr_bad = 0.0, 0, 0
    for _, r in reps:
        row = rows[r.end_seq]
        worst = max(worst, abs(r.score - row[js]) / max(1.0, abs(row[js])))
        flags += int(r.anomaly) != int(row[ja])
        for m, (name, rate, chans) in zip(r.modalities, MODS):
            for q in range(rate):
                for c, ch in enumerate(chans):
                    col = head.index((ch if rate == 1 else f"{ch}.{q}") + "_corrected")
                    if not math.isclose(m.corrected[q * len(chans) + c], row[col],
                                        rel_tol=1e-4, abs_tol=1e-4):
                        corr_bad += 1
    check(worst < 1e-4, f"parity: scores match faultline score (worst relative {worst:.2g})")
    check(flags == 0, f"parity: flags match faultline score ({flags} differ)")
    check(corr_bad == 0, f"parity: corrected samples match faultline score ({corr_bad} differ)")
    print("parity: windows with a replaced channel:",
          sum(any(any(m.channel_faulty) for m in r.modalities) for _, r in reps))
    check(d.stop() == 0, "parity: clean exit")
    ctx.destroy(linger=0)


def scenario_correct():
    n, cut = 480, 260
    # The long faults, written as a CSV for `faultline score` and sent as
    # frames from the same rows.
    csv_path = os.path.join(TMP, "long.csv")
    tab = T.long_faults(EPISODE, MODS, csv_path, n)
    scored = os.path.join(TMP, "long_scored.csv")
    subprocess.run([FL, "score", "--model", MODEL, "--in", csv_path, "--out", scored], check=True)
    head, rows = T.read_csv(scored)
    ctx = zmq.Context()
    d, cfg, ports = start("correct", output={"stride": 1})
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
    pub, _ = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    for i in range(cut):
        pub.send_multipart([b"frame/long", tab.frame(pb, "long", i, i).SerializeToString()])
    reps = T.collect(sub, pb, cut - W + 1, timeout=60)
    check(len(reps) == cut - W + 1, f"correct: {len(reps)} reports before the reload")
    d.signal(signal.SIGHUP)
    ok = T.wait_metric(ports["http"], 'faultline_reloads_total{result="success"}', lambda v: v >= 1)
    check(ok == 1, "correct: SIGHUP reloads in the middle of the faults")
    for i in range(cut, n):
        pub.send_multipart([b"frame/long", tab.frame(pb, "long", i, i).SerializeToString()])
    reps += T.collect(sub, pb, n - cut, timeout=60)
    check(len(reps) == n - W + 1, f"correct: {len(reps)} reports for {n - W + 1} windows")
    bad_c, bad_u, missing_u = 0, 0, []
    same = lambda a, b: (math.isnan(a) and math.isnan(b)) or \
        math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)
    for _, r in reps:
        row = rows[r.end_seq]
        for m, (name, rate, chans) in zip(r.modalities, MODS):
            check_len = len(m.uncertainty) == len(m.corrected)
            if not check_len:
                bad_u += 1
                continue
            for q in range(rate):
                for c, ch in enumerate(chans):
                    col = (ch if rate == 1 else f"{ch}.{q}")
                    k = q * len(chans) + c
                    bad_c += not same(m.corrected[k], row[head.index(col + "_corrected")])
                    bad_u += not same(m.uncertainty[k], row[head.index(col + "_sd")])
                    if ch == "flow" and 200 <= r.end_seq < 380:
                        missing_u.append((m.corrected[k], m.uncertainty[k]))
    check(bad_c == 0, f"correct: corrected values match faultline score ({bad_c} differ)")
    check(bad_u == 0, f"correct: uncertainties match faultline score ({bad_u} differ)")
    check(len(missing_u) == 180 and all(math.isfinite(v) and u > 0 for v, u in missing_u),
          "correct: every missing flow sample estimated, with a positive uncertainty")
    passed = [m.uncertainty[1] for _, r in reps if r.end_seq < 150 and r.score <= r.threshold
              for m in r.modalities[2:3] if not m.channel_faulty[1]]
    check(passed and all(u == 0 for u in passed),
          "correct: a reading that passes carries uncertainty 0")
    check(d.stop() == 0, "correct: clean exit")
    ctx.destroy(linger=0)


def scenario_tools():
    n = 660
    csv = os.path.join(TMP, "episode.csv")
    with open(EPISODE) as f, open(csv, "w") as g:
        for i, line in enumerate(f):
            if i > n:
                break
            g.write(line)
    d, cfg, ports = start("tools")
    k = expected_windows(n)
    out = open(os.path.join(TMP, "tail.jsonl"), "w")
    tail = T.spawn([FL, "tail", "--connect", f"tcp://127.0.0.1:{ports['out']}",
                    "--stream", "pump", "--json", "--count", str(k), "--timeout", "30"],
                   stdout=out)
    check(T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1) >= 1,
          "tools: tail subscribed")
    rp = subprocess.run([FL, "replay", "--in", csv, "--connect", f"tcp://127.0.0.1:{ports['in']}",
                         "--config", CONFIG, "--stream", "pump-a", "--inject", "offset",
                         "--fault-modality", "hydraulic", "--fault-channel", "0",
                         "--fault-at", str(FAULT_AT), "--fault-rows", str(FAULT_ROWS),
                         "--fault-magnitude", str(FAULT_SD)], capture_output=True, text=True)
    check(rp.returncode == 0, "tools: replay succeeded: " + rp.stderr.strip())
    check(tail.wait(60) == 0, "tools: tail got every report before its timeout")
    out.close()
    with open(out.name) as f:
        lines = [json.loads(line) for line in f if line.strip()]

    class R:  # the JSON's fields as the protobuf's
        def __init__(self, o):
            self.__dict__.update(o)
            self.modalities = [type("M", (), m) for m in o["modalities"]]
    reps = [("report/" + o["stream"], R(o)) for o in lines]
    check_reports(reps, n, "pump-a", "tools")
    # A text-mode tail against a prefix nobody publishes times out cleanly.
    p = subprocess.run([FL, "tail", "--connect", f"tcp://127.0.0.1:{ports['out']}", "--stream",
                        "nobody", "--timeout", "1"], capture_output=True, text=True, timeout=30)
    check(p.returncode == 0 and p.stdout == "", "tools: tail with no reports prints nothing")
    check(d.stop() == 0, "tools: clean exit")


def scenario_reject():
    tab = T.Table(EPISODE, MODS)
    d, cfg, ports = start("reject", input={"max_streams": 2, "max_message_bytes": 4096})
    ctx = zmq.Context()
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    check(ok, "reject: the daemon subscribes")

    def send(f, topic=None):
        """The topic names the frame's stream unless given."""
        if topic is None:
            topic = b"frame/" + (f.stream.encode() if not isinstance(f, bytes) else b"x")
        pub.send_multipart([topic, f if isinstance(f, bytes) else f.SerializeToString()])

    for i in range(100):
        send(tab.frame(pb, "ok", i, i))
    expect = {}

    def bad(reason, f, times=1):
        for _ in range(times):
            send(f)
        expect[reason] = expect.get(reason, 0) + times

    bad("undecodable", b"\xff\xff\xff\xff not a protobuf")
    bad("bad_stream", tab.frame(pb, "", 100, 0))
    bad("bad_stream", tab.frame(pb, "spaces are bad", 100, 0))
    f = tab.frame(pb, "ok", 100, 100)
    f.blocks[0].modality = "sonar"
    bad("unknown_modality", f)
    f = tab.frame(pb, "ok", 100, 100)
    f.blocks.append(f.blocks[1])
    bad("inconsistent_modality", f)  # a modality twice
    f = tab.frame(pb, "ok", 100, 100)
    del f.blocks[0].samples[-1]
    bad("inconsistent_modality", f)  # samples that are not one tick at its rate
    f = tab.frame(pb, "ok", 100, 100)
    f.blocks[1].channels = 3
    bad("channel_count", f)
    f = tab.frame(pb, "ok", 100, 100)
    f.blocks[2].samples[0] = math.inf
    bad("nonfinite", f)
    f = tab.frame(pb, "ok", 100, 100)
    f.blocks[3].samples[1] = -math.inf
    bad("nonfinite", f)
    bad("oversize", b"\x0a" + b"x" * 6000)
    bad("duplicate", tab.frame(pb, "ok", 99, 99))
    bad("old", tab.frame(pb, "ok", 50, 50))
    # A jump beyond [input] max_seq_jump is not believed (nor counted as a gap).
    bad("seq_jump", tab.frame(pb, "ok", 2**63, 0, ts=0))
    # The topic and the payload's stream must agree: subscribers shard by topic.
    send(tab.frame(pb, "ok", 100, 100), topic=b"frame/other1")
    expect["topic_mismatch"] = 1
    # NaN is missing, not invalid; a gap of 10 ticks is filled and counted.
    f = tab.frame(pb, "ok", 100, 100)
    f.blocks[2].samples[0] = math.nan
    send(f)
    send(tab.frame(pb, "ok", 111, 111))
    # A third stream exceeds max_streams = 2.
    send(tab.frame(pb, "s2", 0, 0))
    send(tab.frame(pb, "s3", 0, 0))
    n_sent = 100 + sum(expect.values()) + 4
    T.wait_metric(ports["http"], "faultline_frames_received_total", lambda v: v >= n_sent)
    m, text = T.metrics(ports["http"])
    for reason in ["undecodable", "bad_stream", "unknown_modality", "inconsistent_modality",
                   "channel_count", "nonfinite", "oversize", "duplicate", "old", "seq_jump",
                   "topic_mismatch"]:
        got = m.get(f'faultline_frames_rejected_total{{reason="{reason}"}}')
        check(got == expect.get(reason, 0), f"reject: {reason} counted {got}, "
              f"expected {expect.get(reason, 0)}")
    check(m.get('faultline_frames_dropped_total{reason="stream_limit"}') == 1,
          "reject: the third stream's frame is dropped and counted")
    check(m.get("faultline_frames_processed_total") == 103, "reject: 103 frames processed")
    check(m.get("faultline_sequence_gaps_total") == 1 and
          m.get("faultline_sequence_gap_ticks_total") == 10, "reject: one gap of 10 ticks")
    total = (m["faultline_frames_processed_total"] +
             sum(v for k, v in m.items() if k.startswith("faultline_frames_rejected_total")) +
             sum(v for k, v in m.items() if k.startswith("faultline_frames_dropped_total")))
    check(total == m["faultline_frames_received_total"] == n_sent,
          f"reject: every frame accounted for ({total} of {n_sent})")
    # The missing value and the gap became windows like any other.
    check(m.get("faultline_reports_total", 0) >= 3, "reject: windows with gaps were reported")
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True)
    check(p.returncode == 0, "reject: promtool accepts /metrics: " + p.stdout + p.stderr)
    check(text.count("faultline_layer_spectral_norm{") > 10 and
          "faultline_layer_lipschitz_target{" in text and
          'faultline_inference_latency_seconds_bucket{le="+Inf"}' in text and
          "faultline_event_loop_lag_seconds " in text and
          "faultline_model_load_timestamp_seconds " in text and "faultline_streams 2" in text,
          "reject: layer norms, targets, latency, loop lag, model and streams exposed")
    # A message part beyond the hard limit costs the sender its connection.
    pub.send_multipart([b"frame/ok", b"x" * 20000])
    v = T.wait_metric(ports["http"], "faultline_input_disconnects_total", lambda v: v >= 1,
                      timeout=10)
    check(v is not None and v >= 1, "reject: a message over the hard limit disconnects its sender")
    status, body = T.http_get(ports["http"], "/healthz")
    check(status == 200 and body == "ok\n", "reject: the daemon is alive and healthy")
    # And it still serves: a new publisher continues stream "ok".
    pub.close(linger=0)
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    before = T.metrics(ports["http"])[0]["faultline_frames_processed_total"]
    pub.send_multipart([b"frame/ok", tab.frame(pb, "ok", 112, 112).SerializeToString()])
    after = T.wait_metric(ports["http"], "faultline_frames_processed_total",
                          lambda v: v > before, timeout=10)
    check(after == before + 1, "reject: valid frames are processed after all that")
    try:
        T.http_get(ports["http"], "/nothing")
        check(False, "reject: an unknown path is 404")
    except Exception as e:  # urllib raises on 404
        check("404" in str(e), "reject: an unknown path is 404")
    check(d.stop() == 0, "reject: clean exit")
    ctx.destroy(linger=0)


class NotifyListener:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        self.s.settimeout(0.2)
        self.msgs = []
        self.lock = threading.Lock()
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                data = self.s.recv(4096).decode()
            except socket.timeout:
                continue
            with self.lock:
                self.msgs.append((time.time(), data))

    def wait(self, pred, timeout=20, start=0):
        t_end = time.time() + timeout
        while time.time() < t_end:
            with self.lock:
                for i, (_, m) in enumerate(self.msgs):
                    if i >= start and pred(m):
                        return i, m
            time.sleep(0.05)
        return None, None

    def all(self):
        with self.lock:
            return [m for _, m in self.msgs]


def scenario_lifecycle():
    tab, _, _ = faulty_table()
    # The command line: --check-config says ok or why not, --version.
    good, _ = make_config("check")
    p = subprocess.run([FLD, "--check-config", good], capture_output=True, text=True)
    check(p.returncode == 0 and "ok (model" in p.stdout, "lifecycle: --check-config accepts")
    broken = os.path.join(TMP, "broken.ini")
    T.write_config(broken, good, {"output": {"stride": 0}})
    p = subprocess.run([FLD, "--check-config", broken], capture_output=True, text=True)
    check(p.returncode == 1 and "stride" in p.stderr and p.stderr.startswith("<3>"),
          "lifecycle: --check-config refuses a bad value and names it: " + p.stderr.strip())
    T.write_config(broken, good, {"model": {"file": os.path.join(TMP, "none.model")}})
    p = subprocess.run([FLD, "--check-config", broken], capture_output=True, text=True)
    check(p.returncode == 1 and "none.model" in p.stderr,
          "lifecycle: --check-config refuses a missing model")
    p = subprocess.run([FLD, "--version"], capture_output=True, text=True)
    check(p.returncode == 0 and p.stdout.startswith("faultlined "), "lifecycle: --version")
    nl = NotifyListener(os.path.join(TMP, "notify.sock"))
    env = {"NOTIFY_SOCKET": os.path.join(TMP, "notify.sock"), "WATCHDOG_USEC": "400000"}
    d, cfg, ports = start("life", env=env)
    i_ready, _ = nl.wait(lambda m: "READY=1" in m.split("\n"))
    check(i_ready is not None, "lifecycle: READY=1")
    time.sleep(1.2)
    wd = [m for m in nl.all() if "WATCHDOG=1" in m.split("\n")]
    check(len(wd) >= 3, f"lifecycle: WATCHDOG=1 every 200 ms ({len(wd)} in 1.2 s)")
    _, st = nl.wait(lambda m: m.startswith("STATUS=") and "frames/s" in m, timeout=5)
    check(st is not None, "lifecycle: STATUS= with rates")
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    for i in range(120):
        pub.send_multipart([b"frame/life", tab.frame(pb, "life", i, i).SerializeToString()])
    reps = T.collect(sub, pb, expected_windows(120), timeout=30)
    check(len(reps) == expected_windows(120), "lifecycle: reports before the reloads")
    version = reps[0][1].model_version
    # A valid reload.
    n0 = len(nl.all())
    d.signal(signal.SIGHUP)
    ok = T.wait_metric(ports["http"], 'faultline_reloads_total{result="success"}', lambda v: v >= 1)
    check(ok == 1, "lifecycle: SIGHUP reloads")
    # The datagrams may trail the metric a little: wait for them.
    i_rl, rl = nl.wait(lambda m: "RELOADING=1" in m, start=n0)
    check(rl is not None and "MONOTONIC_USEC=" in rl,
          "lifecycle: RELOADING=1 with MONOTONIC_USEC")
    i_rd, _ = nl.wait(lambda m: "READY=1" in m.split("\n"), start=(i_rl or n0) + 1)
    check(i_rd is not None, "lifecycle: READY=1 after the reload")
    # A broken one: the daemon keeps serving the old model.
    with open(cfg, "a") as f:
        f.write("\n[input]\nno_such_key = 1\n")
    d.signal(signal.SIGHUP)
    bad = T.wait_metric(ports["http"], 'faultline_reloads_total{result="failure"}',
                        lambda v: v >= 1)
    check(bad == 1, "lifecycle: the broken reload is counted")
    check("reload failed" in d.logtext() and "no_such_key" in d.logtext(),
          "lifecycle: the log says why the reload failed")
    for i in range(120, 240):
        pub.send_multipart([b"frame/life", tab.frame(pb, "life", i, i).SerializeToString()])
    reps2 = T.collect(sub, pb, 8, timeout=30)
    check(len(reps2) == 8 and all(r.model_version == version for _, r in reps2),
          "lifecycle: still serving with the old model after a broken reload")
    check(reps2 and reps2[0][1].seq == reps[-1][1].seq + 1,
          "lifecycle: streams survive the reloads")
    # A model file that is not one: also refused.
    with open(cfg, "a") as f:
        f.write("\n[model]\nfile = " + os.path.join(TMP, "missing.model") + "\n")
    lines = open(cfg).read().replace("no_such_key = 1", "")
    with open(cfg, "w") as f:
        f.write(lines)
    d.signal(signal.SIGHUP)
    bad = T.wait_metric(ports["http"], 'faultline_reloads_total{result="failure"}',
                        lambda v: v >= 2)
    check(bad == 2, "lifecycle: a reload with a missing model is refused")
    # SIGTERM with frames in flight: STOPPING, a drain, exit 0, and every
    # report the daemon counted reaches the subscriber.
    for i in range(240, 600):
        pub.send_multipart([b"frame/life", tab.frame(pb, "life", i, i).SerializeToString()])
    time.sleep(0.05)
    n_before = len(reps) + len(reps2)
    d.signal(signal.SIGTERM)
    rc = d.p.wait(30)
    check(rc == 0, f"lifecycle: exit 0 after SIGTERM (got {rc})")
    _, stopping = nl.wait(lambda m: "STOPPING=1" in m, timeout=2)
    check(stopping is not None, "lifecycle: STOPPING=1")
    log = d.logtext()
    import re
    mm = re.search(r"(\d+) received, (\d+) processed, (\d+) reports", log)
    check(mm is not None, "lifecycle: the final log line counts frames and reports")
    rest = T.collect(sub, pb, 10**6, timeout=3)
    if mm:
        check(n_before + len(rest) == int(mm.group(3)),
              f"lifecycle: every counted report arrived ({n_before + len(rest)} of "
              f"{mm.group(3)})")
    check(all(line[:3] in ("<3>", "<4>", "<5>", "<6>", "<7>") for line in log.splitlines()
              if line), "lifecycle: every log line has a journald priority prefix")
    nl.stop = True
    d.stop()
    ctx.destroy(linger=0)


def scenario_curve():
    tab = T.Table(EPISODE, MODS)
    srv_pub, srv_sec = zmq.curve_keypair()
    cli_pub, cli_sec = zmq.curve_keypair()
    str_pub, str_sec = zmq.curve_keypair()
    keydir = os.path.join(TMP, "clients")
    os.mkdir(keydir)
    # The secret key as systemd passes it with LoadCredential= (a root-only
    # key under DynamicUser=): a relative secret_key names a file in
    # $CREDENTIALS_DIRECTORY.
    creds = os.path.join(TMP, "credentials")
    os.mkdir(creds, 0o700)
    fd = os.open(os.path.join(creds, "server.key_secret"), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write('#   ZeroMQ CURVE **Secret** Certificate\ncurve\n    public-key = "%s"\n'
                '    secret-key = "%s"\n' % (srv_pub.decode(), srv_sec.decode()))
    with open(os.path.join(keydir, "sensor-1.key"), "w") as f:
        f.write(cli_pub.decode() + "\n")
    sec = {"curve": 1, "secret_key": "server.key_secret", "authorized_keys": keydir}
    # Without the credential the daemon refuses to start and names the path.
    empty = os.path.join(TMP, "no-credentials")
    os.mkdir(empty)
    path, _ = make_config("curve-nocred", security=sec)
    bad = T.Daemon(FLD, path, env={"CREDENTIALS_DIRECTORY": empty})
    try:
        rc = bad.p.wait(20)
    except subprocess.TimeoutExpired:
        rc = None
    log = bad.logtext()
    bad.stop()
    check(rc not in (None, 0) and os.path.join(empty, "server.key_secret") in log,
          f"curve: a missing credential stops the daemon, naming the path (exit {rc}): {log[-300:]}")
    d, cfg, ports = start("curve", env={"CREDENTIALS_DIRECTORY": creds}, security=sec)
    ctx = zmq.Context()
    good = (cli_sec, cli_pub, srv_pub)
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}", curve=good)
    T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1)
    # A stranger with a key of its own, and a plaintext publisher.
    stranger, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}",
                               curve=(str_sec, str_pub, srv_pub), wait=2)
    check(not ok, "curve: the stranger's connection never subscribes")
    plain, ok2 = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}", wait=1)
    check(not ok2, "curve: a plaintext publisher never subscribes")
    for i in range(100):
        stranger.send_multipart([b"frame/evil", tab.frame(pb, "evil", i, i).SerializeToString()])
        plain.send_multipart([b"frame/evil", tab.frame(pb, "evil", i, i).SerializeToString()])
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}", curve=good)
    check(ok, "curve: the authorised publisher is subscribed to")
    for i in range(90):
        pub.send_multipart([b"frame/good", tab.frame(pb, "good", i, i).SerializeToString()])
    reps = T.collect(sub, pb, expected_windows(90), timeout=30)
    check(len(reps) == expected_windows(90) and all(r.stream == "good" for _, r in reps),
          "curve: the authorised publisher's frames are reported, nothing else")
    m, _ = T.metrics(ports["http"])
    check(m["faultline_frames_received_total"] == 90, "curve: no stranger frame got in "
          f"({m['faultline_frames_received_total']} received)")
    check(m['faultline_zap_requests_total{result="denied"}'] >= 1, "curve: ZAP denials counted")
    # A subscriber without an authorised key gets nothing.
    evil_sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}",
                            curve=(str_sec, str_pub, srv_pub))
    time.sleep(0.5)
    for i in range(90, 120):
        pub.send_multipart([b"frame/good", tab.frame(pb, "good", i, i).SerializeToString()])
    got = T.collect(evil_sub, pb, 1, timeout=3)
    check(not got, "curve: an unauthorised subscriber receives no report")
    # The C tools as CurveZMQ clients: replay and tail with the authorised key.
    ckey = os.path.join(TMP, "client.key_secret")
    with open(ckey, "w") as f:
        f.write('curve\n    public-key = "%s"\n    secret-key = "%s"\n'
                % (cli_pub.decode(), cli_sec.decode()))
    skey = os.path.join(TMP, "server.key")
    with open(skey, "w") as f:
        f.write(srv_pub.decode() + "\n")
    csv = os.path.join(TMP, "short.csv")
    with open(EPISODE) as f, open(csv, "w") as g:
        for i, line in enumerate(f):
            if i > 90:
                break
            g.write(line)
    out = open(os.path.join(TMP, "tail.txt"), "w")
    tail = T.spawn([FL, "tail", "--connect", f"tcp://127.0.0.1:{ports['out']}",
                    "--stream", "tools", "--count", str(expected_windows(90)),
                    "--timeout", "20", "--curve-key", ckey, "--curve-server-key", skey],
                   stdout=out)
    check(T.wait_metric(ports["http"], "faultline_report_subscriptions",
                        lambda v: v >= 2, timeout=10) >= 2, "curve: tail is subscribed")
    rp = subprocess.run([FL, "replay", "--in", csv, "--connect", f"tcp://127.0.0.1:{ports['in']}",
                         "--config", CONFIG, "--stream", "tools", "--curve-key", ckey,
                         "--curve-server-key", skey, "--wait", "10"],
                        capture_output=True, text=True)
    check(rp.returncode == 0 and "no subscriber" not in rp.stderr,
          "curve: replay with the authorised key is subscribed to: " + rp.stderr.strip())
    check(tail.wait(40) == 0, "curve: tail with the authorised key gets every report")
    out.close()
    # An authorised client key but the wrong server public key: the daemon
    # cannot open the client's HELLO, so the handshake fails (the socket
    # monitor never sees HANDSHAKE_SUCCEEDED, but sees the connection
    # dropped), no frame gets in, no report gets out, and the daemon serves on.
    other_pub, _ = zmq.curve_keypair()
    wrong = (cli_sec, cli_pub, other_pub)
    m0, _ = T.metrics(ports["http"])
    wpub = ctx.socket(zmq.XPUB)
    wsub = ctx.socket(zmq.SUB)
    mons = []
    for s, ep in ((wpub, ports["in"]), (wsub, ports["out"])):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.HANDSHAKE_IVL, 1000)
        s.setsockopt(zmq.RECONNECT_IVL, 200)
        s.curve_secretkey, s.curve_publickey, s.curve_serverkey = wrong
        mons.append(s.get_monitor_socket())
        if s is wsub:
            s.setsockopt(zmq.SUBSCRIBE, b"report/")
        s.connect(f"tcp://127.0.0.1:{ep}")
    wpub.setsockopt(zmq.RCVTIMEO, 2000)
    try:
        wpub.recv()
        subscribed = True
    except zmq.Again:
        subscribed = False
    check(not subscribed, "curve: a client with the wrong server key is never subscribed to")
    for i in range(120, 210):
        wpub.send_multipart([b"frame/wrongkey", tab.frame(pb, "wrongkey", i, i).SerializeToString()])
        pub.send_multipart([b"frame/good", tab.frame(pb, "good", i, i).SerializeToString()])
    got = T.collect(wsub, pb, 1, timeout=3)
    check(not got, "curve: a subscriber with the wrong server key receives no report")
    from zmq.utils.monitor import recv_monitor_message
    for name, mon in zip(("publisher", "subscriber"), mons):
        events = []
        while mon.poll(100):
            events.append(recv_monitor_message(mon)["event"])
        check(zmq.EVENT_CONNECTED in events,
              f"curve: the wrong-key {name}'s TCP connection was made ({events})")
        check(zmq.EVENT_HANDSHAKE_SUCCEEDED not in events,
              f"curve: the wrong-key {name}'s handshake never succeeded")
        check(zmq.EVENT_DISCONNECTED in events or any(
            e in events for e in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                                  zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                                  zmq.EVENT_HANDSHAKE_FAILED_AUTH)),
              f"curve: the wrong-key {name}'s handshake failed ({events})")
    m, _ = T.metrics(ports["http"])
    check(m["faultline_frames_received_total"] - m0["faultline_frames_received_total"] == 90,
          "curve: only the authorised publisher's frames got in while the wrong key tried "
          f"({m['faultline_frames_received_total'] - m0['faultline_frames_received_total']} of 90)")
    check(d.p.poll() is None and T.http_get(ports["http"], "/healthz")[0] == 200,
          "curve: the daemon serves on after failed handshakes")
    for s in [wpub, wsub]:
        s.disable_monitor()
        s.close(0)
    for mon in mons:
        mon.close(0)
    check(d.stop() == 0, "curve: clean exit")
    ctx.destroy(linger=0)


try:
    {"stream": scenario_stream, "tools": scenario_tools, "reject": scenario_reject,
     "lifecycle": scenario_lifecycle, "curve": scenario_curve,
     "correct": scenario_correct}[SCENARIO]()
except Exception as e:  # a crash is a failure with its story
    import traceback
    traceback.print_exc()
    T.failures.append(f"{SCENARIO}: {e}")
T.finish(SCENARIO)
