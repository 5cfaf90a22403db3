"""Helpers of the faultlined process tests: the wire protocol's Python classes
(generated from proto/faultline.proto with protoc at test time), the plant's
modality layout, a daemon under test, publishers and subscribers on loopback.
"""
import atexit
import configparser
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import zmq

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

failures = []

# Every process the helpers start and nobody has reaped: a test that dies by
# an exception or meson's timeout must not leave daemons behind it.
live = set()


def spawn(argv, **kw):
    """subprocess.Popen(argv, **kw), the process registered in live so that
    it is terminated when this Python process exits."""
    p = subprocess.Popen(argv, **kw)
    live.add(p)
    return p


def reap(p, timeout=20):
    """Stops p if it still runs (SIGTERM, SIGKILL after timeout seconds),
    drops it from live; its exit status."""
    live.discard(p)
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def _reap_live():
    """At exit: SIGTERM to every live process, SIGKILL to those still up 5 s
    later (the grace is shared, so many processes do not add up)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # A second signal must not cut the cleanup short.
        if signal.getsignal(sig) is _sigterm:
            signal.signal(sig, signal.SIG_IGN)
    procs = [p for p in live if p.poll() is None]
    live.clear()
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except OSError:
            pass
    t_end = time.time() + 5
    for p in procs:
        try:
            p.wait(max(0.0, t_end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _sigterm(signum, frame):
    # SystemExit unwinds like an exception, so finally blocks and atexit run.
    raise SystemExit(128 + signum)


atexit.register(_reap_live)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    # Only where the script has not chosen a handler of its own.
    if signal.getsignal(_sig) == signal.SIG_DFL:
        signal.signal(_sig, _sigterm)


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr, flush=True)
    return cond


def finish(name):
    if failures:
        print(f"{name}: {len(failures)} checks failed", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: all checks passed")


def load_proto(tmp):
    """Compiles proto/faultline.proto for Python into tmp and imports it."""
    subprocess.run(["protoc", "--proto_path=" + os.path.join(ROOT, "proto"),
                    "--python_out=" + tmp, os.path.join(ROOT, "proto", "faultline.proto")],
                   check=True)
    sys.path.insert(0, tmp)
    import faultline_pb2  # noqa: E402
    return faultline_pb2


def free_port():
    """A loopback port that is free now, drawn at random below Linux's
    ephemeral range (32768-60999).  A port the kernel hands out for bind(0)
    comes from that range, where outgoing connections (ZeroMQ's connects,
    HTTP scrapes of tests running in parallel) also take their local ports,
    so it could be taken again before the daemon binds it."""
    rng = random.SystemRandom()
    for _ in range(200):
        p = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port in 20000-32767")


def modalities(config):
    """[(name, rate, [channels])] from a config's [modality.NAME] sections."""
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    cp.read(config)
    out = []
    for sec in cp.sections():
        if sec.startswith("modality."):
            chans = [c.strip() for c in cp[sec]["channels"].split(",")]
            out.append((sec[9:], int(cp[sec].get("rate", "1")), chans))
    return out


def read_csv(path):
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    def num(v):
        try:
            return float(v) if v not in ("", "nan", "NaN") else math.nan
        except ValueError:  # datetime and other text columns
            return math.nan
    return head, [[num(v) for v in r] for r in rows[1:]]


class Table:
    """A CSV recording as per-modality blocks of each row."""

    def __init__(self, path, mods):
        self.head, self.rows = read_csv(path)
        self.mods = mods
        col = {n: i for i, n in enumerate(self.head)}
        self.idx = []  # per modality: (rate, C, [column index of (q, c)])
        for name, rate, chans in mods:
            cols = []
            for q in range(rate):
                for c in chans:
                    cols.append(col[c] if rate == 1 else col[f"{c}.{q}"])
            self.idx.append(cols)

    def column(self, name):
        return self.head.index(name)

    def frame(self, pb, stream, seq, row, ts=None):
        f = pb.Frame(stream=stream, seq=seq, timestamp_ns=ts if ts is not None else seq * 10**9)
        r = self.rows[row]
        for (name, rate, chans), cols in zip(self.mods, self.idx):
            f.blocks.add(modality=name, channels=len(chans), samples=[r[j] for j in cols])
        return f


def long_faults(episode, mods, path, n):
    """Writes episode's first n rows to path with faults that outlast several
    windows: an offset of 6 sd on pressure (rows 150-399) and flow missing
    (rows 200-379); returns them as a Table."""
    import csv
    import statistics
    src = Table(episode, mods)
    jp, jf = src.column("pressure"), src.column("flow")
    sd = statistics.pstdev(r[jp] for r in src.rows[:n])
    with open(episode, newline="") as f, open(path, "w", newline="") as g:
        rd, wr = csv.reader(f), csv.writer(g)
        wr.writerow(next(rd))
        for i, row in enumerate(rd):
            if i >= n:
                break
            if 150 <= i < 400:
                row[jp] = repr(float(row[jp]) + 6.0 * sd)
            if 200 <= i < 380:
                row[jf] = ""
            wr.writerow(row)
    return Table(path, mods)


def write_config(path, base, overrides):
    """base's text followed by override sections (later keys win)."""
    with open(base) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text)
        f.write("\n")
        for sec, kv in overrides.items():
            f.write(f"[{sec}]\n")
            for k, v in kv.items():
                f.write(f"{k} = {v}\n")


def daemon_config(tmp, name, model, config, **sections):
    """tmp/name.ini: config's text, then the model, loopback endpoints on free
    ports (input bound), info logging, then the keys of sections (a dict per
    section); (path, {"in", "out", "http": port})."""
    ports = {"in": free_port(), "out": free_port(), "http": free_port()}
    over = {
        "model": {"file": model},
        "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "bind": 1},
        "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}"},
        "metrics": {"listen": f"127.0.0.1:{ports['http']}"},
        "log": {"level": "info"},
    }
    for sec, kv in sections.items():
        over.setdefault(sec, {}).update(kv)
    path = os.path.join(tmp, name + ".ini")
    write_config(path, config, over)
    return path, ports


class Daemon:
    def __init__(self, exe, config, env=None, log=None):
        self.exe, self.config = exe, config
        self.log = open(log or config + ".log", "w")
        self.logpath = self.log.name
        e = dict(os.environ)
        e.update(env or {})
        self.p = spawn([exe, "--config", config], stdout=self.log, stderr=self.log, env=e)

    def metrics_url(self, port):
        return f"http://127.0.0.1:{port}"

    def wait_http(self, port, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.p.poll() is not None:
                raise RuntimeError(f"faultlined exited {self.p.returncode}:\n" + self.logtext())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("faultlined did not come up:\n" + self.logtext())

    def logtext(self):
        self.log.flush()
        with open(self.logpath) as f:
            return f.read()

    def signal(self, sig):
        self.p.send_signal(sig)

    def stop(self, timeout=20):
        reap(self.p, timeout)
        self.log.close()
        return self.p.returncode


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


def metrics(port):
    """/metrics as {name{labels}: value}."""
    _, text = http_get(port, "/metrics")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        k, v = line.rsplit(" ", 1)
        out[k] = float(v)
    return out, text


def wait_metric(port, key, pred, timeout=30):
    t0 = time.time()
    v = None
    while time.time() - t0 < timeout:
        m, _ = metrics(port)
        v = m.get(key)
        if v is not None and pred(v):
            return v
        time.sleep(0.05)
    return v


def publisher(ctx, endpoint, bind=False, kind=zmq.XPUB, curve=None, wait=10.0):
    """An XPUB (it sees the daemon's subscription, so the test knows frames
    will not fall into the slow-joiner gap) or a PUSH socket: (socket, whether
    the daemon subscribed within wait seconds)."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 2000)
    s.setsockopt(zmq.SNDHWM, 0)
    if curve:
        s.curve_secretkey, s.curve_publickey, s.curve_serverkey = curve
    if bind:
        s.bind(endpoint)
    else:
        s.connect(endpoint)
    if kind == zmq.XPUB:
        s.setsockopt(zmq.RCVTIMEO, int(wait * 1000))
        try:
            s.recv()
        except zmq.Again:
            return s, False
    return s, True


def subscriber(ctx, endpoint, prefix=b"report/", curve=None):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    if curve:
        s.curve_secretkey, s.curve_publickey, s.curve_serverkey = curve
    s.setsockopt(zmq.SUBSCRIBE, prefix)
    s.connect(endpoint)
    return s


def collect(sock, pb, n, timeout=60):
    """Up to n reports (or until timeout): [(topic, Report)]."""
    out = []
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    t_end = time.time() + timeout
    while len(out) < n and time.time() < t_end:
        if not poller.poll(200):
            continue
        topic, payload = sock.recv_multipart()
        r = pb.Report()
        r.ParseFromString(payload)
        out.append((topic.decode(), r))
    return out
