#!/usr/bin/python3
"""Scale-out on loopback: real faultlined daemons sharding streams by topic
prefix behind two real `faultline proxy` processes (frames and reports).

usage: test_scale.py SCENARIO FAULTLINED FAULTLINE MODEL EPISODE_CSV CONFIG

SCENARIO is one of:
  shard   3 daemons, a frame proxy and a report proxy, 300 streams (100 per
          daemon prefix).  Every window of every stream is reported exactly
          once; each daemon receives exactly its shard's frames; one daemon
          is killed (SIGKILL) while frames flow and restarted: only its
          streams miss windows (counted, against the exact expectation, by
          the test's subscriber and by `faultline tail --gaps`), the two
          others report every window; the proxies' /metrics (real HTTP
          scrapes) count the frames, reports, peers and subscriptions.
  curve   CurveZMQ through both proxies: an authorised publisher's frames
          reach a daemon and its reports reach an authorised consumer; a
          stranger's key is refused and counted on the proxy.
  restart each proxy is killed (SIGKILL) and started again on its ports:
          the daemon, the publisher and the consumer reconnect by
          themselves, and every window of the frames sent afterwards is
          reported.
  reshard a prefix moves from one daemon to another with SIGHUP ([input]
          topic changed, no restart): the old owner releases it, the new
          one takes it; every window of the other streams is reported, the
          moved stream's windows once each, by its owner of the moment.
  cli     bad input to `faultline proxy` fails with a clear message and
          exit status 2 (or 1 for a run-time error); --help answers; [input]
          topic lists are checked; two chained proxies forward in order;
          SIGTERM stops a running proxy with status 0.
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
from fldtest import check  # noqa: E402

SCENARIO, FLD, FL, MODEL, EPISODE, CONFIG = sys.argv[1:7]
FLD, FL, MODEL, EPISODE, CONFIG = map(os.path.abspath, (FLD, FL, MODEL, EPISODE, CONFIG))
TMP = tempfile.mkdtemp(prefix="fl-scale-" + SCENARIO + "-")
pb = T.load_proto(TMP)
MODS = T.modalities(CONFIG)
W, STRIDE = 60, 15


class Proxy:
    """A `faultline proxy` process with its endpoints and metrics port."""

    def __init__(self, name, extra=(), ports=None):
        self.front, self.back, self.http = ports or (T.free_port(), T.free_port(), T.free_port())
        self.log = open(os.path.join(TMP, name + ".log"), "a")
        self.logpath = self.log.name
        self.p = T.spawn(
            [FL, "proxy", "--frontend", f"tcp://127.0.0.1:{self.front}",
             "--backend", f"tcp://127.0.0.1:{self.back}",
             "--metrics", f"127.0.0.1:{self.http}", *extra],
            stdout=self.log, stderr=self.log)
        t0 = time.time()
        while time.time() - t0 < 20:
            if self.p.poll() is not None:
                raise RuntimeError(f"proxy {name} exited {self.p.returncode}: " + self.text())
            try:
                if T.http_get(self.http, "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"proxy {name} did not come up: " + self.text())

    def text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.logpath) as f:
            return f.read()

    def metric(self, key):
        return T.metrics(self.http)[0].get(key)

    def stop(self):
        T.reap(self.p, 15)
        self.log.close()
        return self.p.returncode


def daemon_config(name, topics, fproxy, rproxy, security=None):
    http = T.free_port()
    over = {
        "model": {"file": MODEL},
        "input": {"endpoint": f"tcp://127.0.0.1:{fproxy.back}", "bind": 0, "topic": topics,
                  "max_streams": 128},
        "output": {"endpoint": f"tcp://127.0.0.1:{rproxy.front}", "bind": 0, "stride": STRIDE},
        "metrics": {"listen": f"127.0.0.1:{http}"},
        "log": {"level": "notice"},
    }
    if security:
        over["security"] = security
    path = os.path.join(TMP, name + ".ini")
    T.write_config(path, CONFIG, over)
    return path, http


def wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return check(False, what + f" (not within {timeout} s)")


def wait_sub_messages(pub, want, timeout=20):
    """Reads subscription messages on an XPUB until every one of want is seen."""
    want = set(want)
    seen = set()
    t_end = time.time() + timeout
    poller = zmq.Poller()
    poller.register(pub, zmq.POLLIN)
    while not want <= seen and time.time() < t_end:
        if poller.poll(100):
            seen.add(pub.recv())
    return want <= seen


class Frames:
    """Serialised frames: a header (stream, seq, timestamp) followed by a
    row's blocks; protobuf merges the two encodings into one Frame."""

    def __init__(self):
        self.tab = T.Table(EPISODE, MODS)
        self.rows = []
        for r in range(len(self.tab.rows)):
            f = self.tab.frame(pb, "x", 0, r)
            f.ClearField("stream")
            f.ClearField("seq")
            f.ClearField("timestamp_ns")
            self.rows.append(f.SerializeToString())

    def get(self, stream, seq):
        h = pb.Frame(stream=stream, seq=seq, timestamp_ns=(seq + 1) * 10**9).SerializeToString()
        return h + self.rows[seq % len(self.rows)]


def drain(sub, got, until, timeout):
    """Reads reports into got[(stream, end_seq)] (a count) until until()."""
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    t_end = time.time() + timeout
    while not until() and time.time() < t_end:
        if not poller.poll(100):
            continue
        while True:
            try:
                topic, payload = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            r = pb.Report()
            r.ParseFromString(payload)
            check(topic.decode() == "report/" + r.stream, f"topic {topic} for {r.stream}")
            k = (r.stream, r.end_seq)
            got[k] = got.get(k, 0) + 1


def grid(lo, hi):
    """Window ends of a stream whose ticks lo..hi-1 all arrived (lo on the
    stride grid): the first window ends W - 1 after lo."""
    return list(range(lo + W - 1, hi, STRIDE))


def scenario_shard():
    N_D, PER = 3, 100
    T1, T2, T3 = 120, 240, 360  # ticks: phase 1, phase 2 (daemon 1 down), phase 3
    KILLED = 1
    fx = Frames()
    fproxy, rproxy = Proxy("frames"), Proxy("reports")
    daemons, cfgs = [], []
    for d in range(N_D):
        path, http = daemon_config(f"d{d}", f"frame/s{d}-", fproxy, rproxy)
        cfgs.append((path, http))
        daemons.append(T.Daemon(FLD, path))
    for (path, http), dm in zip(cfgs, daemons):
        dm.wait_http(http)
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{rproxy.back}")
    # The consumer's subscription reaches every daemon through the report proxy.
    for d, (path, http) in enumerate(cfgs):
        check(T.wait_metric(http, "faultline_report_subscriptions", lambda v: v >= 1) == 1,
              f"shard: daemon {d} sees the consumer's subscription through the report proxy")
    # `faultline tail` through the same proxy counts windows and gaps per
    # stream.  Its prefix "report/s" differs from the subscriber's, so its
    # subscription too travels to every daemon, and the test can see it there.
    total_reports = sum(len(grid(0, T3)) if int(s[1]) != KILLED else
                        len(grid(0, T1)) + len(grid(T2, T3))
                        for s in (f"s{d}-{i:03d}" for d in range(N_D) for i in range(PER)))
    tail_out = open(os.path.join(TMP, "tail.txt"), "w")
    tail_err = open(os.path.join(TMP, "tail.err"), "w")
    tail = T.spawn([FL, "tail", "--connect", f"tcp://127.0.0.1:{rproxy.back}",
                    "--stream", "s", "--gaps", "--count", str(total_reports),
                    "--timeout", "60"], stdout=tail_out, stderr=tail_err)
    for d, (path, http) in enumerate(cfgs):
        check(T.wait_metric(http, "faultline_report_subscriptions", lambda v: v >= 2) == 2,
              f"shard: daemon {d} sees tail's subscription through the report proxy")
    check(T.wait_metric(rproxy.http, "faultline_proxy_peers{side=\"backend\"}",
                        lambda v: v >= 2) == 2, "shard: report proxy sees the two consumers")
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(f"tcp://127.0.0.1:{fproxy.front}")
    check(wait_sub_messages(pub, [b"\x01frame/s%d-" % d for d in range(N_D)]),
          "shard: the publisher sees every daemon's prefix through the frame proxy")
    check(T.wait_metric(fproxy.http, "faultline_proxy_peers{side=\"backend\"}",
                        lambda v: v == N_D) == N_D, "shard: frame proxy has 3 daemons")
    streams = [f"s{d}-{i:03d}" for d in range(N_D) for i in range(PER)]
    owner = {s: int(s[1]) for s in streams}
    got = {}
    sent = 0

    def send(lo, hi):
        nonlocal sent
        for seq in range(lo, hi):
            for s in streams:
                pub.send_multipart([b"frame/" + s.encode(), fx.get(s, seq)])
                sent += 1

    def expected(phase_end, restarted=False):
        out = set()
        for s in streams:
            if owner[s] == KILLED and restarted:
                ends = grid(0, T1) + grid(T2, phase_end)
            elif owner[s] == KILLED and phase_end > T1:
                ends = grid(0, T1)
            else:
                ends = grid(0, phase_end)
            out |= {(s, e) for e in ends}
        return out

    t0 = time.time()
    send(0, T1)
    e1 = expected(T1)
    drain(sub, got, lambda: e1 <= set(got), 60)
    check(e1 <= set(got), f"shard: phase 1: {len(e1 & set(got))} of {len(e1)} windows")
    # Kill one daemon while the others keep going.
    daemons[KILLED].p.kill()
    daemons[KILLED].p.wait()
    check(wait_sub_messages(pub, [b"\x00frame/s%d-" % KILLED]),
          "shard: the killed daemon's unsubscription reaches the publisher")
    check(T.wait_metric(fproxy.http, "faultline_proxy_peers{side=\"backend\"}",
                        lambda v: v == N_D - 1) == N_D - 1,
          "shard: frame proxy counts the daemon gone")
    # Its frames are still published: the publisher's XPUB drops them
    # (nobody subscribes), which the frame proxy's count shows below.
    for seq in range(T1, T2):
        for s in streams:
            pub.send_multipart([b"frame/" + s.encode(), fx.get(s, seq)])
            if owner[s] != KILLED:
                sent += 1
    e2 = expected(T2)
    drain(sub, got, lambda: e2 <= set(got), 60)
    check(e2 <= set(got), f"shard: phase 2 (daemon {KILLED} down): the others report "
          f"{len(e2 & set(got))} of {len(e2)} windows")
    # Restart it: it subscribes again and serves its streams from scratch.
    path, http = cfgs[KILLED]
    daemons[KILLED] = T.Daemon(FLD, path, log=path + ".2.log")
    daemons[KILLED].wait_http(http)
    check(wait_sub_messages(pub, [b"\x01frame/s%d-" % KILLED]),
          "shard: the restarted daemon's subscription reaches the publisher")
    check(T.wait_metric(http, "faultline_report_subscriptions", lambda v: v >= 2) == 2,
          "shard: the restarted daemon sees both consumers' subscriptions")
    send(T2, T3)
    e3 = expected(T3, restarted=True)
    drain(sub, got, lambda: e3 <= set(got), 60)
    elapsed = time.time() - t0
    # Every daemon has published everything it will: the counts settle.
    want_reports = {d: PER * (len(grid(0, T3)) if d != KILLED else len(grid(T2, T3)))
                    for d in range(N_D)}
    for d, (path, http) in enumerate(cfgs):
        check(T.wait_metric(http, "faultline_reports_total",
                            lambda v, d=d: v >= want_reports[d]) == want_reports[d],
              f"shard: daemon {d} published {want_reports[d]} reports")
    check(T.wait_metric(rproxy.http, 'faultline_proxy_messages_total{direction="downstream"}',
                        lambda v: v >= total_reports) == total_reports,
          f"shard: report proxy forwarded {total_reports} reports")
    drain(sub, got, lambda: sum(got.values()) >= total_reports, 10)
    # Exactly once, nothing else.
    dup = [k for k, n in got.items() if n != 1]
    check(not dup, f"shard: {len(dup)} windows reported more than once, e.g. {dup[:3]}")
    check(set(got) == e3, f"shard: reported windows equal the expectation "
          f"({len(set(got) - e3)} unexpected, {len(e3 - set(got))} missing)")
    # The gap: exactly the killed daemon's streams miss exactly the windows
    # that ended while it was down or needed ticks from then.
    full = set(grid(0, T3))
    missing = {s: len(full - {e for (t, e) in got if t == s}) for s in streams}
    gap_windows = len(full) - len(grid(0, T1)) - len(grid(T2, T3))
    check(all(missing[s] == (gap_windows if owner[s] == KILLED else 0) for s in streams),
          f"shard: only daemon {KILLED}'s streams miss windows, {gap_windows} each "
          f"(got {sorted(set(missing.values()))})")
    # Ownership: each daemon received exactly its own shard's frames.
    for d, (path, http) in enumerate(cfgs):
        m, _ = T.metrics(http)
        ticks = T3 if d != KILLED else T3 - T2
        check(m["faultline_frames_received_total"] == PER * ticks and
              m["faultline_frames_processed_total"] == PER * ticks and
              m["faultline_streams"] == PER,
              f"shard: daemon {d} received exactly its {PER} streams' frames "
              f"({m['faultline_frames_received_total']:.0f} received, "
              f"{m['faultline_streams']:.0f} streams)")
        check(m["faultline_sequence_gaps_total"] == 0, f"shard: daemon {d} saw no gap itself")
        check(m.get(f'faultline_input_topic_info{{topic="frame/s{d}-"}}') == 1 and
              sum(k.startswith("faultline_input_topic_info") for k in m) == 1,
              f"shard: daemon {d} exports its one prefix")
    # The proxies, scraped over HTTP.
    fm, ftext = T.metrics(fproxy.http)
    fwd = fm['faultline_proxy_messages_total{direction="downstream"}']
    check(fwd == sent, f"shard: frame proxy forwarded the {sent} frames some daemon "
          f"subscribed to ({fwd:.0f})")
    check(fm["faultline_proxy_subscription_messages_total"] >= N_D + 2,
          "shard: frame proxy saw 3 subscriptions, an unsubscription and a resubscription")
    check(fm['faultline_proxy_bytes_total{direction="downstream"}'] > 100 * sent,
          "shard: frame proxy counts bytes")
    check(fm["faultline_proxy_up"] == 1 and fm["faultline_proxy_uptime_seconds"] > 0,
          "shard: frame proxy up, uptime")
    rm, _ = T.metrics(rproxy.http)
    check(rm['faultline_proxy_peers{side="frontend"}'] == N_D,
          "shard: report proxy has 3 daemons again")
    promtool = subprocess.run(["which", "promtool"], capture_output=True, text=True).stdout.strip()
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=ftext, capture_output=True,
                           text=True)
        check(r.returncode == 0, "shard: promtool accepts the proxy's /metrics: " + r.stderr)
    # tail --gaps: its summary line counts the same gap.
    check(tail.wait(90) == 0, "shard: tail got its count of reports")
    tail_out.close()
    tail_err.close()
    summary = open(tail_err.name).read()
    want = (f"{len(streams)} streams, {total_reports} reports, "
            f"{PER} streams with gaps, {PER * gap_windows} windows missing")
    check(want in summary, f"shard: tail --gaps reports '{want}': {summary.strip()}")
    print(f"shard: {len(streams)} streams, {total_reports} reports in {elapsed:.1f} s")
    for dm in daemons:
        check(dm.stop() == 0, "shard: daemons exit cleanly")
    check(fproxy.stop() == 0 and rproxy.stop() == 0, "shard: proxies exit 0 on SIGTERM")
    ctx.destroy(linger=0)


def scenario_curve():
    srv_pub, srv_sec = zmq.curve_keypair()   # the daemons' pair
    px_pub, px_sec = zmq.curve_keypair()     # the proxies' pair
    cli_pub, cli_sec = zmq.curve_keypair()   # an authorised sensor / consumer
    str_pub, str_sec = zmq.curve_keypair()   # a stranger
    def write(name, text):
        path = os.path.join(TMP, name)
        with open(path, "w") as f:
            f.write(text)
        return path
    px_key = write("proxy.key_secret", 'curve\n    public-key = "%s"\n    secret-key = "%s"\n'
                   % (px_pub.decode(), px_sec.decode()))
    srv_key = write("server.key_secret", 'curve\n    public-key = "%s"\n    secret-key = "%s"\n'
                    % (srv_pub.decode(), srv_sec.decode()))
    srv_public = write("server.key", srv_pub.decode() + "\n")
    px_clients = os.path.join(TMP, "proxy-clients")
    os.mkdir(px_clients)
    write("proxy-clients/sensor.key", cli_pub.decode() + "\n")
    d_clients = os.path.join(TMP, "daemon-clients")
    os.mkdir(d_clients)
    write("daemon-clients/proxy.key", px_pub.decode() + "\n")
    common = ["--curve-key", px_key, "--authorized-keys", px_clients]
    # Frames: sensors are clients of the proxy; the proxy is a client of the
    # daemons.  Reports: the reverse.
    fproxy = Proxy("frames", common + ["--backend-server-key", srv_public])
    rproxy = Proxy("reports", common + ["--frontend-server-key", srv_public])
    path, http = daemon_config("d0", "frame/", fproxy, rproxy, security={
        "curve": 1, "secret_key": srv_key, "authorized_keys": d_clients})
    dm = T.Daemon(FLD, path)
    dm.wait_http(http)
    ctx = zmq.Context()
    good = (cli_sec, cli_pub, px_pub)
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{rproxy.back}", curve=good)
    check(T.wait_metric(http, "faultline_report_subscriptions", lambda v: v >= 1) == 1,
          "curve: the consumer's subscription reaches the daemon through the report proxy")
    stranger, ok = T.publisher(ctx, f"tcp://127.0.0.1:{fproxy.front}",
                               curve=(str_sec, str_pub, px_pub), wait=1)
    check(not ok, "curve: a stranger's publisher is never subscribed to")
    check(T.wait_metric(fproxy.http, 'faultline_zap_requests_total{result="denied"}',
                        lambda v: v >= 1) >= 1, "curve: the frame proxy counts the refusal")
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{fproxy.front}", curve=good)
    check(ok, "curve: the authorised publisher sees the daemon's subscription")
    fx = Frames()
    for seq in range(90):
        stranger.send_multipart([b"frame/evil", fx.get("evil", seq)])
        pub.send_multipart([b"frame/good", fx.get("good", seq)])
    reps = T.collect(sub, pb, 3, timeout=30)
    check([r.end_seq for _, r in reps] == [59, 74, 89] and
          all(r.stream == "good" for _, r in reps),
          f"curve: the authorised stream's 3 windows arrive through both proxies ({len(reps)})")
    m, _ = T.metrics(http)
    check(m["faultline_frames_received_total"] == 90, "curve: no stranger frame reached the daemon")
    check(m['faultline_zap_requests_total{result="allowed"}'] >= 2,
          "curve: the daemon admitted both proxies")
    check(dm.stop() == 0 and fproxy.stop() == 0 and rproxy.stop() == 0, "curve: clean exits")
    ctx.destroy(linger=0)


def scenario_restart():
    fproxy, rproxy = Proxy("frames"), Proxy("reports")
    path, http = daemon_config("d0", "frame/", fproxy, rproxy)
    dm = T.Daemon(FLD, path)
    dm.wait_http(http)
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{rproxy.back}")
    check(T.wait_metric(http, "faultline_report_subscriptions", lambda v: v >= 1) == 1,
          "restart: the consumer's subscription reaches the daemon")
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(f"tcp://127.0.0.1:{fproxy.front}")
    check(wait_sub_messages(pub, [b"\x01frame/"]), "restart: the publisher sees the daemon")
    fx = Frames()
    got = {}
    probes = [0]

    def probe(what):
        """Proves the path end to end after a restart: windows of fresh probe
        streams until one is reported (each try is a new stream)."""
        t_end = time.time() + 30
        while time.time() < t_end:
            probes[0] += 1
            name = f"probe-{probes[0]}"
            for seq in range(W):
                pub.send_multipart([b"frame/" + name.encode(), fx.get(name, seq)])
            drain(sub, got, lambda: (name, W - 1) in got, 1)
            if (name, W - 1) in got:
                return True
        return check(False, f"restart: no report through the proxies after {what}")

    def run(lo, hi, what):
        for seq in range(lo, hi):
            pub.send_multipart([b"frame/main", fx.get("main", seq)])
        want = {("main", e) for e in range(W - 1, hi, STRIDE)}
        drain(sub, got, lambda: want <= set(got), 30)
        check(want <= set(got) and all(got[k] == 1 for k in want),
              f"restart: {what}: {len(want & set(got))} of {len(want)} windows, once each")

    run(0, 90, "before the restarts")
    for px, name in ((fproxy, "frames"), (rproxy, "reports")):
        ports = (px.front, px.back, px.http)
        px.p.kill()
        px.p.wait()
        px.log.close()
        new = Proxy(name, ports=ports)
        if name == "frames":
            fproxy = new
        else:
            rproxy = new
        probe(f"the {name} proxy restarted")
    run(90, 180, "after both proxies restarted")
    m, _ = T.metrics(http)
    # Probes sent before a path was back are dropped by the publisher's XPUB,
    # which had no subscriber; one caught while the subscription arrives is
    # cut short. Each of the two probes that got through brought a whole
    # window, and the main stream lost nothing.
    extra = m["faultline_frames_received_total"] - 180
    check(2 * W <= extra <= W * probes[0] and
          m["faultline_sequence_gaps_total"] == 0,
          f"restart: the daemon got every frame of the main stream, without a gap "
          f"({m['faultline_frames_received_total']:.0f} frames with {probes[0]} probes)")
    check(dm.stop() == 0 and fproxy.stop() == 0 and rproxy.stop() == 0, "restart: clean exits")
    ctx.destroy(linger=0)


def scenario_reshard():
    fproxy, rproxy = Proxy("frames"), Proxy("reports")
    cfgs = [daemon_config(f"d{d}", f"frame/{p}-", fproxy, rproxy) for d, p in enumerate("ab")]
    daemons = [T.Daemon(FLD, path) for path, _ in cfgs]
    for dm, (path, http) in zip(daemons, cfgs):
        dm.wait_http(http)
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{rproxy.back}")
    for path, http in cfgs:
        T.wait_metric(http, "faultline_report_subscriptions", lambda v: v >= 1)
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(f"tcp://127.0.0.1:{fproxy.front}")
    check(wait_sub_messages(pub, [b"\x01frame/a-", b"\x01frame/b-"]),
          "reshard: the publisher sees both daemons")
    fx = Frames()
    got = {}

    def send(lo, hi):
        for seq in range(lo, hi):
            for s in ("a-1", "b-1"):
                pub.send_multipart([b"frame/" + s.encode(), fx.get(s, seq)])

    send(0, 90)
    want1 = {(s, e) for s in ("a-1", "b-1") for e in (59, 74, 89)}
    drain(sub, got, lambda: want1 <= set(got), 30)
    check(want1 <= set(got), "reshard: before: both streams reported")
    # Hand b- from daemon 1 to daemon 0: the old owner releases it first (its
    # last subscription leaving reaches the publisher), then the new owner
    # takes it, so that no frame of b- reaches both.
    def reload(d, topics):
        path, http = cfgs[d]
        T.write_config(path, CONFIG, {
            "model": {"file": MODEL},
            "input": {"endpoint": f"tcp://127.0.0.1:{fproxy.back}", "bind": 0,
                      "topic": topics, "max_streams": 128},
            "output": {"endpoint": f"tcp://127.0.0.1:{rproxy.front}", "bind": 0,
                       "stride": STRIDE},
            "metrics": {"listen": f"127.0.0.1:{http}"}, "log": {"level": "notice"}})
        daemons[d].signal(signal.SIGHUP)
        check(T.wait_metric(http, 'faultline_reloads_total{result="success"}',
                            lambda v: v >= 1) == 1, f"reshard: daemon {d} reloaded")
    reload(1, "frame/c-")
    check(wait_sub_messages(pub, [b"\x00frame/b-", b"\x01frame/c-"]),
          "reshard: daemon 1 released frame/b- and took frame/c-")
    reload(0, "frame/a-, frame/b-")
    check(wait_sub_messages(pub, [b"\x01frame/b-"]), "reshard: daemon 0 took frame/b-")
    send(90, 180)
    # a-1 goes on; b-1 starts afresh on daemon 0 at tick 90.
    want2 = want1 | {("a-1", e) for e in range(104, 180, STRIDE)} | \
        {("b-1", e) for e in (149, 164, 179)}
    drain(sub, got, lambda: want2 <= set(got), 30)
    drain(sub, got, lambda: False, 0.5)  # a duplicate or stray report would show now
    check(set(got) == want2 and all(n == 1 for n in got.values()),
          f"reshard: every window once, b-1 from its new owner after the hand-over "
          f"({len(set(got) & want2)} of {len(want2)}, {len(set(got) - want2)} unexpected)")
    m0, _ = T.metrics(cfgs[0][1])
    m1, _ = T.metrics(cfgs[1][1])
    check(m0["faultline_reports_total"] == 12 and m1["faultline_reports_total"] == 3,
          f"reshard: daemon 0 published 12 reports, daemon 1 3 "
          f"({m0['faultline_reports_total']:.0f}, {m1['faultline_reports_total']:.0f})")
    check(m0.get('faultline_input_topic_info{topic="frame/b-"}') == 1 and
          m1.get('faultline_input_topic_info{topic="frame/c-"}') == 1 and
          'faultline_input_topic_info{topic="frame/b-"}' not in m1,
          "reshard: the shards in /metrics follow the reload")
    check(m1["faultline_frames_received_total"] == 90, "reshard: daemon 1 got no b- frame after")
    check("subscribed to frame/b-" in daemons[0].logtext() and
          "unsubscribed from frame/b-" in daemons[1].logtext(), "reshard: the moves are logged")
    for dm in daemons:
        check(dm.stop() == 0, "reshard: clean exit")
    check(fproxy.stop() == 0 and rproxy.stop() == 0, "reshard: proxies exit 0")
    ctx.destroy(linger=0)


def scenario_cli():
    def run(*args):
        r = subprocess.run([FL, "proxy", *args], capture_output=True, text=True, timeout=20)
        return r.returncode, r.stdout + r.stderr
    rc, out = run("--help")
    check(rc == 0 and "--frontend" in out and "--backend-server-key" in out and
          "zmq_proxy_steerable" in out, "cli: --help answers")
    ep = "tcp://127.0.0.1:%d" % T.free_port()
    cases = [
        ((), 2, "--frontend and --backend are required"),
        (("--frontend", ep), 2, "--frontend and --backend are required"),
        (("--frontend", ep, "--backend", ep, "--hwm", "many"), 2, '--hwm "many"'),
        (("--frontend", ep, "--backend", ep, "--metrics", "9110"), 2, "want ADDRESS:PORT"),
        (("--frontend", ep, "--backend", ep, "--log-level", "loud"), 2, "--log-level"),
        (("--frontend", ",".join([ep] * 9), "--backend", ep), 2, "at most 8"),
        (("--frontend", ep, "--backend", ep, "--curve-key", "/nonexistent/k",
          "--authorized-keys", TMP), 1, "--curve-key /nonexistent/k: No such file"),
        (("--frontend", ep, "--backend", ep, "--authorized-keys", TMP), 2, "need --curve-key"),
        (("--frontend", ep, "--backend", "bogus://x"), 1, "backend: cannot bind bogus://x"),
        (("--frontend", ep, "--backend", ep), 1, "cannot bind"),  # the same address twice
        (("--frontend", ep, "--backend", "tcp://127.0.0.1:%d" % T.free_port(), "extra"), 2,
         'unexpected argument "extra"'),
    ]
    for args, want_rc, want in cases:
        rc, out = run(*args)
        check(rc == want_rc and want in out,
              f"cli: {' '.join(args) or '(none)'}: exit {rc}, want {want_rc} and '{want}': "
              f"{out.strip()[:200]}")
    # The daemon's shard: a list of frame/ prefixes, anything else refused.
    for topic, ok, want in [("frame/a-, frame/b-", True, "ok (model"),
                            ("frame/a-, b-", False, '"b-" does not start with "frame/"'),
                            ("frame/a-,,frame/b-", False, "comma-separated list of 1 to 16"),
                            (",".join(f"frame/{i}" for i in range(17)), False, "1 to 16")]:
        path = os.path.join(TMP, "topic.ini")
        T.write_config(path, CONFIG, {"model": {"file": MODEL}, "input": {"topic": topic}})
        r = subprocess.run([FLD, "--check-config", path], capture_output=True, text=True)
        check((r.returncode == 0) == ok and want in r.stdout + r.stderr,
              f"cli: [input] topic = {topic[:40]}: exit {r.returncode}, want '{want}': "
              f"{(r.stdout + r.stderr).strip()[:200]}")
    # A metrics port in use is a start-up error, not a silent proxy without metrics.
    px = Proxy("first")
    rc, out = run("--frontend", "tcp://127.0.0.1:%d" % T.free_port(), "--backend",
                  "tcp://127.0.0.1:%d" % T.free_port(), "--metrics", f"127.0.0.1:{px.http}")
    check(rc == 1 and "cannot serve metrics" in out, f"cli: metrics port in use: {out.strip()}")
    # Chaining: a second proxy whose frontend connects (">") to the first's
    # backend, as a central view over site proxies would.
    px2 = Proxy("second", ["--frontend", f">tcp://127.0.0.1:{px.back}"])
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{px2.back}")
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{px.front}")
    check(ok, "cli: a subscription travels through two chained proxies")
    for i in range(50):
        pub.send_multipart([b"report/chain", b"%d" % i])
    got = []
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while len(got) < 50 and poller.poll(5000):
        got.append(sub.recv_multipart()[1])
    check(got == [b"%d" % i for i in range(50)], f"cli: 50 messages through two proxies, "
          f"in order ({len(got)})")
    check(px2.metric('faultline_proxy_peers{side="frontend"}') == 1,
          "cli: the chained proxy's frontend has one peer (the first proxy)")
    check(px2.stop() == 0, "cli: the chained proxy stops cleanly")
    ctx.destroy(linger=0)
    st, body = T.http_get(px.http, "/healthz")
    check(st == 200 and body == "ok\n", "cli: /healthz")
    try:
        T.http_get(px.http, "/nope")
        check(False, "cli: /nope is 404")
    except OSError as e:
        check("404" in str(e), f"cli: /nope is 404 ({e})")
    check(px.stop() == 0, "cli: SIGTERM stops the proxy with status 0")
    check("stopping" in px.text(), "cli: the stop is logged")


try:
    {"shard": scenario_shard, "curve": scenario_curve, "restart": scenario_restart,
     "reshard": scenario_reshard, "cli": scenario_cli}[SCENARIO]()
finally:
    pass
T.finish("scale_" + SCENARIO)
