#!/usr/bin/python3
"""Process tests of `faultline bridge`: a real broker (mosquitto on a free
loopback port, its own config in a temp dir), real publishers and
subscribers (paho-mqtt; Sparkplug B payloads from proto/sparkplug_b.proto
compiled with protoc), the bridge and a real faultlined with the daemon
tests' model.

usage: test_bridge.py SCENARIO FAULTLINED FAULTLINE MODEL EPISODE_CSV CONFIG

SCENARIO is one of:
  sparkplug  password-protected broker; an edge node publishes the episode
             by Sparkplug B (NBIRTH, DBIRTH, DDATA by alias) with a fault in
             hydraulic pressure: the bridge's own edge node births its
             devices, every report comes back as DDATA and JSON, the fault is
             flagged in hydraulic and the corrected pressure is nearer the
             clean signal than the raw one, the retained state is there
  restart    the broker killed and restarted mid-stream, then a rebirth of
             the publisher and a seq gap: frames never stop, samples lost
             are bounded by the time the broker was down (the bridge's
             metrics), a rebirth is requested, reports resume
  bad        undecodable payloads, unknown aliases, a changed type, an
             unmapped topic, bad JSON, a string value: each counted under
             its reason, the bridge alive and reports still flowing
  tls        mqtts:// with a CA, a server and a client certificate made by
             openssl now; JSON per-tag topics in, JSON reports out
  config     `faultline bridge --check` on good and broken configurations
             (each error names its key); a wrong password is refused by the
             broker and the bridge keeps retrying, alive; READY, WATCHDOG,
             STATUS and STOPPING to a NOTIFY_SOCKET listener
  wide       a model wider than the bridge's tables once were (130 channels
             in 65 modalities, trained here in seconds): every channel by
             Sparkplug B, the last one under a name of the map's, an offset
             fault in it; its values reach faultlined (its corrected value is
             the input on healthy windows), the reports come back as DDATA and
             JSON naming the last modality and channel, the fault flagged there;
             then a bridge of 1,500 channels in 300 modalities and two streams
             (no model needed): distinct Sparkplug aliases across its devices,
             a value of the last channel in the last block of its frame
A scenario that cannot run here (no mosquitto, paho or openssl) exits 77.
"""
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))


def skip(why):
    print("SKIP:", why)
    sys.exit(77)


for prog in ("mosquitto", "mosquitto_passwd", "protoc", "openssl"):
    if not shutil.which(prog) and not os.path.exists("/usr/sbin/" + prog):
        skip(f"{prog} is not installed (deploy/deps.sh installs it)")
try:
    import paho.mqtt.client as mqtt
except ImportError:
    skip("python3-paho-mqtt is not installed (deploy/deps.sh installs it)")

import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

SCENARIO, FLD, FL, MODEL, EPISODE, CONFIG = sys.argv[1:7]
FLD, FL, MODEL, EPISODE, CONFIG = map(os.path.abspath, (FLD, FL, MODEL, EPISODE, CONFIG))
TMP = tempfile.mkdtemp(prefix="flb-" + SCENARIO + "-")
pb = T.load_proto(TMP)
subprocess.run(["protoc", "--proto_path=" + os.path.join(T.ROOT, "proto"), "--python_out=" + TMP,
                os.path.join(T.ROOT, "proto", "sparkplug_b.proto")], check=True)
import sparkplug_b_pb2 as spb  # noqa: E402

MODS = T.modalities(CONFIG)
CHANNELS = [(m, c, rate) for m, rate, chans in MODS for c in chans]
W, STRIDE = 60, 15
TICK_MS = 20
FAULT_AT, FAULT_ROWS, FAULT_SD = 300, 120, 6.0
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
FLOAT, DOUBLE, BOOLEAN, STRING = 9, 10, 11, 12


# ---- the broker -------------------------------------------------------------

class Broker:
    """mosquitto on a free loopback port, with its own config file."""

    def __init__(self, name, password=None, tls=None, port=None):
        self.port = port or T.free_port()
        self.dir = os.path.join(TMP, name)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        lines = [f"listener {self.port} 127.0.0.1", "persistence false",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            # Or mosquitto drops to its own user, who cannot read our temp dir.
            lines.append("user root")
        if password:
            pw = os.path.join(self.dir, "passwd")
            user, secret = password
            subprocess.run(["mosquitto_passwd", "-b", "-c", pw, user, secret], check=True,
                           capture_output=True)
            os.chmod(pw, 0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['server_crt']}",
                      f"keyfile {tls['server_key']}", "require_certificate true"]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.p = None
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "mosquitto.log"), "a")
        self.p = T.spawn([MOSQUITTO, "-c", self.conf], stdout=self.log,
                         stderr=self.log)
        t0 = time.time()
        import socket
        while time.time() - t0 < 10:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start:\n" +
                           open(os.path.join(self.dir, "mosquitto.log")).read())

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            self.p.wait(10)
        self.log.close()


def make_tls():
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = os.path.join(TMP, "pki")
    os.makedirs(d)
    p = lambda n: os.path.join(d, n)  # noqa: E731

    def run(*a):
        subprocess.run(list(a), check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=faultline test CA", "-keyout", p("ca.key"), "-out", p("ca.crt"))
    for who in ("server", "client"):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj",
            f"/CN={'127.0.0.1' if who == 'server' else 'faultline-bridge'}",
            "-keyout", p(who + ".key"), "-out", p(who + ".csr"))
        ext = p(who + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n" if who == "server" else
                    "extendedKeyUsage=clientAuth\n")
        run("openssl", "x509", "-req", "-in", p(who + ".csr"), "-CA", p("ca.crt"), "-CAkey",
            p("ca.key"), "-CAcreateserial", "-days", "2", "-out", p(who + ".crt"),
            "-extfile", ext)
    return {"ca": p("ca.crt"), "server_crt": p("server.crt"), "server_key": p("server.key"),
            "client_crt": p("client.crt"), "client_key": p("client.key")}


def client(broker, cid, auth=None, tls=None):
    c = mqtt.Client(client_id=cid, clean_session=True)
    if auth:
        c.username_pw_set(*auth)
    if tls:
        c.tls_set(ca_certs=tls["ca"], certfile=tls["client_crt"], keyfile=tls["client_key"])
    c.reconnect_delay_set(min_delay=1, max_delay=1)
    return c


# ---- a Sparkplug B edge node ----------------------------------------------------

class EdgeNode:
    """group/node with one device, its metrics the model's channels (aliases
    1..N in model order), pressure named as the bridge's map says and sent
    as a Double.  Births on every connection and on a rebirth request.
    channels: the model's [(modality, channel, rate)], the test model's by
    default; names: channel -> metric name where the map renames one."""

    def __init__(self, broker, group, node, device, auth=None, tls=None, channels=None,
                 names=None):
        self.g, self.n, self.d = group, node, device
        self.channels = channels or CHANNELS
        self.names = names if names is not None else {"pressure": "Hydraulic/Pressure"}
        self.lock = threading.Lock()
        self.seq = 0
        self.bdseq = 0
        self.births = 0
        self.ncmds = 0
        self.last = {}
        self.c = client(broker, f"edge-{node}", auth, tls)
        self.c.on_connect = self.on_connect
        self.c.on_message = self.on_message
        self.set_will()
        self.c.connect("127.0.0.1", broker.port, keepalive=5)
        self.c.loop_start()

    def name(self, ch):
        return self.names.get(ch, ch)

    def dtype(self, ch):
        return DOUBLE if ch == "pressure" else FLOAT

    def topic(self, kind):
        dev = kind.startswith("D")
        return f"spBv1.0/{self.g}/{kind}/{self.n}" + (f"/{self.d}" if dev else "")

    def payload(self):
        p = spb.Payload()
        p.timestamp = int(time.time() * 1000)
        return p

    def set_value(self, m, ch, v):
        if math.isnan(v):
            m.is_null = True
        elif self.dtype(ch) == DOUBLE:
            m.double_value = v
        else:
            m.float_value = v

    def set_will(self):
        p = spb.Payload()
        m = p.metrics.add(name="bdSeq", datatype=8)
        m.long_value = self.bdseq
        self.c.will_set(self.topic("NDEATH"), p.SerializeToString(), qos=1)

    def next_seq(self):
        s = self.seq
        self.seq = (self.seq + 1) % 256
        return s

    def birth(self):
        with self.lock:
            self.seq = 0
            p = self.payload()
            p.seq = self.next_seq()
            m = p.metrics.add(name="bdSeq", datatype=8)
            m.long_value = self.bdseq
            m = p.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN)
            m.boolean_value = False
            self.c.publish(self.topic("NBIRTH"), p.SerializeToString(), qos=1)
            p = self.payload()
            p.seq = self.next_seq()
            for i, (mod, ch, rate) in enumerate(self.channels):
                m = p.metrics.add(name=self.name(ch), alias=i + 1, datatype=self.dtype(ch))
                self.set_value(m, ch, self.last.get(ch, math.nan))
            # An unmapped string metric, its alias clear of the channels'.
            m = p.metrics.add(name="Motor/Serial", alias=max(100, len(self.channels) + 1),
                              datatype=STRING)
            m.string_value = "X-1"
            self.c.publish(self.topic("DBIRTH"), p.SerializeToString(), qos=1)
            self.births += 1

    def on_connect(self, c, u, flags, rc):
        if rc == 0:
            c.subscribe(f"spBv1.0/{self.g}/NCMD/{self.n}", qos=1)
            self.birth()

    def on_message(self, c, u, msg):
        p = spb.Payload()
        p.ParseFromString(msg.payload)
        if any(m.name == "Node Control/Rebirth" and m.boolean_value for m in p.metrics):
            self.ncmds += 1
            self.birth()

    def rebirth(self):
        """As an edge node does after a restart: bdSeq + 1, births."""
        self.bdseq = (self.bdseq + 1) % 256
        self.birth()

    def ddata(self, values, skip_seq=False):
        """values: [(channel, ts_ms, value)], by alias."""
        with self.lock:
            p = self.payload()
            if skip_seq:
                self.next_seq()
            p.seq = self.next_seq()
            idx = {ch: i + 1 for i, (_, ch, _) in enumerate(self.channels)}
            for ch, ts, v in values:
                m = p.metrics.add(alias=idx[ch], timestamp=ts)
                self.set_value(m, ch, v)
                self.last[ch] = v
            return self.c.publish(self.topic("DDATA"), p.SerializeToString(), qos=0)

    def raw(self, topic_kind, data):
        return self.c.publish(self.topic(topic_kind), data, qos=1)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


# ---- the episode, paced in real time ---------------------------------------------

def episode(rows, fault=True):
    tab = T.Table(EPISODE, MODS)
    j = tab.column("pressure")
    vals = [r[j] for r in tab.rows[:rows]]
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    clean = list(vals)
    if fault:
        for r in range(FAULT_AT, FAULT_AT + FAULT_ROWS):
            tab.rows[r][j] += FAULT_SD * sd
    return tab, clean, sd


def row_updates(tab, k, t_end_ms, channels=None):
    """Row k's values, each at its own time within the tick ending t_end_ms."""
    r = tab.rows[k]
    col = {n: i for i, n in enumerate(tab.head)}
    out = []
    for mod, ch, rate in channels or CHANNELS:
        if rate == 1:
            out.append((ch, t_end_ms, r[col[ch]]))
        else:
            step = TICK_MS // rate
            for q in range(rate):
                out.append((ch, t_end_ms - TICK_MS + (q + 1) * step, r[col[f"{ch}.{q}"]]))
    return out


def pace(rows, send, start_ms=None, at_row=None):
    """Calls send(k, t_end_ms) for each row when its tick begins; at_row
    (k -> fn) runs between rows.  Returns the first tick's end time."""
    if start_ms is None:
        start_ms = (int(time.time() * 1000) // TICK_MS + 5) * TICK_MS
    t0 = start_ms
    for k in range(rows):
        if at_row and k in at_row:
            at_row[k]()
        t_end = t0 + (k + 1) * TICK_MS
        due = (t_end - TICK_MS) / 1000.0
        d = due - time.time()
        if d > 0:
            time.sleep(d)
        send(k, t_end)
    return t0 + TICK_MS


# ---- faultlined and the bridge ------------------------------------------------------

def start_daemon(name, config=None, model=None):
    ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
    path = os.path.join(TMP, name + "-fld.ini")
    T.write_config(path, config or CONFIG, {
        "model": {"file": model or MODEL},
        "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "bind": 1},
        "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}", "stride": STRIDE},
        "metrics": {"listen": f"127.0.0.1:{ports['http']}"},
    })
    d = T.Daemon(FLD, path)
    d.wait_http(ports["http"])
    return d, ports


def write_bridge_config(name, broker, fld_ports, mqtt_keys, maps, extra=None,
                        model_config=None):
    http = T.free_port()
    path = os.path.join(TMP, name + "-bridge.ini")
    secs = {
        "bridge": {"model_config": model_config or CONFIG, "tick": TICK_MS / 1000, "stale": 0.2,
                   "delay": 0.1, "rebirth_interval": 1},
        "mqtt": dict({"url": f"mqtt://127.0.0.1:{broker.port}", "client_id": "bridge-" + name,
                      "qos": 1, "keepalive": 5, "reconnect_min": 0.1, "reconnect_max": 0.5},
                     **mqtt_keys),
        "faultlined": {"frames": f"tcp://127.0.0.1:{fld_ports['in']}",
                       "reports": f"tcp://127.0.0.1:{fld_ports['out']}"},
        "publish": {"group": "faultline", "node": "bridge"},
        "metrics": {"listen": f"127.0.0.1:{http}", "log_interval": 0.5},
        "log": {"level": "info"},
    }
    for k, v in (extra or {}).items():
        secs.setdefault(k, {}).update(v)
    secs.update(maps)
    with open(path, "w") as f:
        for sec, kv in secs.items():
            f.write(f"[{sec}]\n")
            for k, v in kv.items():
                f.write(f"{k} = {v}\n")
    return path, http


class Bridge(T.Daemon):
    def __init__(self, config, http, env=None):
        self.http = http
        self.exe, self.config = FL, config
        self.log = open(config + ".log", "w")
        self.logpath = self.log.name
        self.p = T.spawn([FL, "bridge", "--config", config], stdout=self.log,
                         stderr=self.log, env=dict(os.environ, **(env or {})))
        self.wait_http(http)

    def metric(self, key):
        m, _ = T.metrics(self.http)
        return m.get(key)

    def wait(self, key, pred, timeout=30):
        return T.wait_metric(self.http, key, pred, timeout)


SPB_MAP = {"source": "sparkplug", "group": "plant", "node": "edge1", "device": "pump1",
           "pressure": "Hydraulic/Pressure"}


# ---- what the bus receives ---------------------------------------------------------

class BusReader:
    """Subscribes to the bridge's Sparkplug edge node and JSON topics;
    decodes DDATA by the aliases of the latest DBIRTH."""

    def __init__(self, broker, auth=None, tls=None):
        self.lock = threading.Lock()
        self.alias = {}
        self.birth_aliases = {}  # device -> the aliases of its latest DBIRTH
        self.ddata = []      # [(device, {name: value})]
        self.births = {"NBIRTH": 0, "DBIRTH": 0}
        self.json = []       # report objects
        self.state = {}      # stream -> (retained flag, object)
        self.c = client(broker, "reader", auth, tls)
        self.c.on_connect = self.on_connect
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", broker.port, keepalive=5)
        self.c.loop_start()

    def on_connect(self, c, u, f, rc):
        """As a Sparkplug host application that came late: subscribe, then
        ask the bridge's edge node for its births."""
        c.subscribe("spBv1.0/faultline/#", 1)
        c.subscribe("faultline/#", 1)
        p = spb.Payload(timestamp=int(time.time() * 1000))
        p.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN, boolean_value=True)
        c.publish("spBv1.0/faultline/NCMD/bridge", p.SerializeToString(), qos=1)

    def on_message(self, c, u, msg):
        with self.lock:
            t = msg.topic.split("/")
            if t[0] == "spBv1.0":
                p = spb.Payload()
                p.ParseFromString(msg.payload)
                kind = t[2]
                if kind in self.births:
                    self.births[kind] += 1
                if kind == "DBIRTH":
                    for m in p.metrics:
                        self.alias[(t[4], m.alias)] = m.name
                    self.birth_aliases[t[4]] = [m.alias for m in p.metrics]
                if kind == "DDATA":
                    vals = {}
                    for m in p.metrics:
                        name = self.alias.get((t[4], m.alias))
                        f = m.WhichOneof("value")
                        vals[name] = math.nan if m.is_null or f is None else getattr(m, f)
                    self.ddata.append((t[4], vals))
            elif t[-1] == "report":
                self.json.append(json.loads(msg.payload))
            elif t[-1] == "state":
                self.state[t[1]] = (msg.retain, json.loads(msg.payload))

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def retained_state(broker, topic, auth=None, tls=None, timeout=5):
    got = []
    c = client(broker, "late-reader", auth, tls)
    c.on_connect = lambda c, u, f, rc: c.subscribe(topic, 1)
    c.on_message = lambda c, u, m: got.append((m.retain, json.loads(m.payload)))
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    t0 = time.time()
    while not got and time.time() - t0 < timeout:
        time.sleep(0.05)
    c.loop_stop()
    c.disconnect()
    return got


def seq0_of(t_first_end_ms):
    return t_first_end_ms // TICK_MS


def check_fault(reps, tab, clean, sd, first_seq, what):
    """reps: [(end_seq, anomaly, faulty_modality, raw, corrected, faulty)] of pressure."""
    in_fault = [r for r in reps if FAULT_AT + 10 <= r[0] - first_seq < FAULT_AT + FAULT_ROWS]
    before = [r for r in reps if r[0] - first_seq < FAULT_AT]
    hyd = [r for r in in_fault if r[1] and r[2] == "hydraulic"]
    check(len(in_fault) >= 4, f"{what}: {len(in_fault)} reports inside the fault")
    check(len(hyd) >= len(in_fault) // 2,
          f"{what}: fault flagged in hydraulic in {len(hyd)} of {len(in_fault)} fault reports")
    fa = sum(r[1] for r in before)
    check(fa <= len(before) // 5, f"{what}: {fa} false alarms in {len(before)} clean reports")
    j = tab.column("pressure")
    inside = [r for r in reps if 0 <= r[0] - first_seq < len(clean)]
    raw_ok = sum(1 for r in inside
                 if math.isclose(r[3], tab.rows[r[0] - first_seq][j], rel_tol=1e-5, abs_tol=1e-5))
    check(raw_ok >= len(inside) * 0.9,
          f"{what}: raw pressure on the bus equals the published value ({raw_ok}/{len(inside)})")
    e_in = e_out = 0.0
    n = 0
    for r in in_fault:
        if not r[5]:
            continue
        row = r[0] - first_seq
        e_in += abs(r[3] - clean[row])
        e_out += abs(r[4] - clean[row])
        n += 1
    check(n > 0, f"{what}: pressure marked faulty and corrected in some fault reports")
    if n:
        check(e_out < e_in, f"{what}: corrected pressure error {e_out / n / sd:.2f} sd vs raw "
                            f"{e_in / n / sd:.2f} sd")


def pressure_of(reports):
    """check_fault's tuples from JSON reports."""
    def num(v):
        return math.nan if v is None else v
    out = []
    for o in reports:
        c = o["channels"]["hydraulic/pressure"]
        out.append((o["end_seq"], o["anomaly"], o["faulty_modality"], num(c["raw"]),
                    num(c["corrected"]), c["faulty"]))
    return out


def teardown(bridge, daemon, broker, *clients):
    for c in clients:
        c.close()
    check(bridge.stop() == 0, "bridge exits 0 on SIGTERM")
    daemon.stop()
    broker.stop()


def spb_reports(reader, device):
    """The device's DDATA decoded by name."""
    with reader.lock:
        return [v for dev, v in reader.ddata if dev == device and "report_seq" in v]


# ---- scenarios ------------------------------------------------------------------------

def scenario_sparkplug():
    auth = ("plant", "s3cret pass")
    broker = Broker("plain", password=auth)
    d, fp = start_daemon("spb")
    cfg, http = write_bridge_config("spb", broker, fp, {"username": auth[0],
                                                        "password": auth[1]},
                                    {"map.pump1": SPB_MAP})
    b = Bridge(cfg, http)
    check(b.wait("faultline_bridge_connected", lambda v: v == 1, 15) == 1,
          "bridge connected to the password-protected broker")
    reader = BusReader(broker, auth)
    edge = EdgeNode(broker, "plant", "edge1", "pump1", auth)
    b.wait("faultline_bridge_births_total", lambda v: v >= 2, 10)
    rows = 600
    tab, clean, sd = episode(rows)
    first_end = pace(rows, lambda k, t: edge.ddata(row_updates(tab, k, t)))
    time.sleep(1.0)
    first_seq = seq0_of(first_end)
    # One report per window, on both encodings.
    n_expect = (rows - W) // STRIDE + 1
    reps = spb_reports(reader, "pump1")
    check(len(reps) >= n_expect - 2, f"{len(reps)} Sparkplug reports for {n_expect} windows")
    check(len(reader.json) >= n_expect - 2, f"{len(reader.json)} JSON reports")
    check(reader.births["NBIRTH"] >= 1 and reader.births["DBIRTH"] >= 1,
          "the bridge's NBIRTH and DBIRTH seen")
    # The last report's end tick: the number of the tick holding the last row.
    ends = [int(v["report_seq"]) for v in reps]
    check(ends == sorted(ends), "Sparkplug reports in order")
    check_fault(pressure_of(reader.json), tab, clean, sd, first_seq, "JSON")
    # Sparkplug DDATA carries the same verdicts: compare by report number.
    by_seq = {o["seq"]: o for o in reader.json}
    same = sum(1 for v in reps if int(v["report_seq"]) in by_seq and
               bool(v["anomaly"]) == by_seq[int(v["report_seq"])]["anomaly"] and
               v["faulty_modality"] == by_seq[int(v["report_seq"])]["faulty_modality"] and
               math.isclose(v["corrected/hydraulic/pressure"],
                            by_seq[int(v["report_seq"])]["channels"]["hydraulic/pressure"]
                            ["corrected"] or math.nan, rel_tol=1e-5))
    check(same >= len(reps) - 1, f"DDATA and JSON agree on {same} of {len(reps)} reports")
    flagged = [v for v in reps if v["anomaly"] and v["faulty/hydraulic/pressure"]]
    check(len(flagged) >= 3, f"DDATA: {len(flagged)} reports with pressure faulty")
    # The retained state: a late subscriber reads it at once.
    st = retained_state(broker, "faultline/pump1/state", auth)
    check(st and st[0][0] and "anomaly" in st[0][1], f"retained state read late: {st}")
    m, text = T.metrics(http)
    check(m.get("faultline_bridge_updates_total", 0) >= rows * 26 * 0.95,
          f"{m.get('faultline_bridge_updates_total')} tag updates taken")
    check(m.get("faultline_bridge_late_total", 1) == 0, "no update late")
    check(all(m.get(f'faultline_bridge_bad_input_total{{reason="{r}"}}', 1) == 0
              for r in ("undecodable", "unknown_alias", "type_changed", "unmapped_topic", "seq")),
          "no bad input counted")
    check(m.get('faultline_bridge_bad_input_total{reason="not_numeric"}') == 0,
          "the unmapped string metric is not an error")
    check(m.get("faultline_bridge_unmapped_metrics_total", -1) == 0,
          "no data for the unmapped metric")
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True) if shutil.which("promtool") else None
    if p:
        check(p.returncode == 0, "promtool accepts /metrics: " + p.stdout + p.stderr)
    code, body = T.http_get(http, "/healthz")
    check(code == 200, "/healthz 200")
    teardown(b, d, broker, edge, reader)


def scenario_restart():
    broker = Broker("restart")
    d, fp = start_daemon("restart")
    cfg, http = write_bridge_config("restart", broker, fp, {}, {"map.pump1": SPB_MAP})
    b = Bridge(cfg, http)
    b.wait("faultline_bridge_connected", lambda v: v == 1, 15)
    reader = BusReader(broker)
    edge = EdgeNode(broker, "plant", "edge1", "pump1")
    b.wait("faultline_bridge_births_total", lambda v: v >= 2, 10)
    rows, down_at, outage = 900, 250, 2.0
    tab, clean, sd = episode(rows, fault=False)
    marks = {}

    def kill():
        marks["t_kill"] = time.time()
        broker.p.kill()
        broker.p.wait()
        broker.log.close()

    def revive():
        broker.start()
        marks["t_up"] = time.time()

    def rebirth():
        marks["births0"] = b.metric("faultline_bridge_births_total")
        edge.rebirth()

    def send(k, t):
        if k == 700:
            edge.ddata(row_updates(tab, k, t), skip_seq=True)
        else:
            edge.ddata(row_updates(tab, k, t))
    at = {down_at: kill, down_at + int(outage * 1000 / TICK_MS): revive, 600: rebirth}
    first_end = pace(rows, send, at_row=at)
    # Before the run's end goes stale: what is missing now is the outage's.
    m_end, _ = T.metrics(http)
    time.sleep(1.0)
    m, _ = T.metrics(http)
    down = m["faultline_bridge_broker_down_seconds_total"]
    check(m["faultline_bridge_disconnects_total"] >= 1 and m["faultline_bridge_connects_total"] >= 2,
          "the bridge saw the broker go and come back")
    check(outage - 0.3 <= down <= outage + 2.0,
          f"broker down {down:.2f} s by the bridge's count for an outage of {outage} s")
    frames = m['faultline_bridge_stream_frames_total{stream="pump1"}']
    check(frames >= rows - 5, f"frames never stopped: {frames:.0f} for {rows} rows (+ tail)")
    width = sum(r for _, _, r in CHANNELS)
    lost_ticks = m_end["faultline_bridge_missing_samples_total"] / width
    # What the outage costs: the ticks of the time down, less the staleness
    # allowance, plus the publisher's own reconnection (paho retries after
    # 1 s) and the birth's round trip.
    bound = (down + 1.3) * 1000 / TICK_MS
    check(lost_ticks <= bound, f"{lost_ticks:.0f} ticks lost, bound {bound:.0f}")
    check(lost_ticks >= (outage - 0.2) * 1000 / TICK_MS * 0.5,
          f"the outage shows as missing samples ({lost_ticks:.0f} ticks)")
    check(m["faultline_bridge_ticks_while_down_total"] >= (outage - 0.3) * 1000 / TICK_MS * 0.8,
          f"{m['faultline_bridge_ticks_while_down_total']:.0f} ticks sent while the broker was down")
    check(m["faultline_bridge_births_total"] >= marks.get("births0", 0) + 2,
          "the publisher's rebirth taken")
    check(m['faultline_bridge_bad_input_total{reason="seq"}'] >= 1, "the seq gap counted")
    check(m["faultline_bridge_rebirth_requests_total"] >= 1 and edge.ncmds >= 1,
          f"a rebirth requested ({m['faultline_bridge_rebirth_requests_total']:.0f}) and "
          f"received by the edge node ({edge.ncmds})")
    # Reports resumed after the broker came back.
    last = max((o["end_seq"] for o in reader.json), default=0)
    check(last - seq0_of(first_end) >= rows - STRIDE - 5,
          f"reports reach the end of the run ({last - seq0_of(first_end)} of {rows})")
    check(reader.births["NBIRTH"] >= 2, "the bridge births again after the restart")
    print(f"outage {outage} s: broker down {down:.2f} s by the bridge's count, "
          f"{m['faultline_bridge_ticks_while_down_total']:.0f} ticks sent meanwhile, "
          f"{lost_ticks:.0f} ticks' worth of samples missing (bound {bound:.0f}), "
          f"{m['faultline_bridge_rebirth_requests_total']:.0f} rebirth requests")
    teardown(b, d, broker, edge, reader)


def scenario_bad():
    broker = Broker("bad")
    d, fp = start_daemon("bad")
    cfg, http = write_bridge_config("bad", broker, fp, {},
                                    {"map.pump1": SPB_MAP,
                                     "map.pump2": {"source": "json",
                                                   "topic": "plant/pump2/telemetry"}})
    b = Bridge(cfg, http)
    b.wait("faultline_bridge_connected", lambda v: v == 1, 15)
    reader = BusReader(broker)
    edge = EdgeNode(broker, "plant", "edge1", "pump1")
    b.wait("faultline_bridge_births_total", lambda v: v >= 2, 10)
    pub = client(broker, "json-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    rows = 300
    tab, _, _ = episode(rows, fault=False)

    def json_row(k, t):
        vals = {}
        for ch, ts, v in row_updates(tab, k, t):
            vals[ch] = v  # the newest sub-sample of a fast channel
        return json.dumps({"ts": t / 1000.0, "values": vals})

    def bad_spb():
        edge.raw("DDATA", b"\xff\x00 not a protobuf")                 # undecodable
        p = spb.Payload(seq=0)
        p.metrics.add(alias=9999, float_value=1.0)                      # unknown alias
        with edge.lock:
            p.seq = edge.next_seq()
            edge.raw("DDATA", p.SerializeToString())
        p = spb.Payload()
        p.metrics.add(alias=1, string_value="high")                     # type changed
        with edge.lock:
            p.seq = edge.next_seq()
            edge.raw("DDATA", p.SerializeToString())
        edge.c.publish("spBv1.0/plant/DDATA/edge1/pump9", b"", qos=1)   # unmapped device
        pub.publish("plant/pump2/telemetry", b"{not json", qos=1)       # undecodable JSON
        pub.publish("plant/pump2/telemetry", json.dumps(
            {"values": {"pressure": "high"}}), qos=1)                   # not numeric

    def send(k, t):
        edge.ddata(row_updates(tab, k, t))
        pub.publish("plant/pump2/telemetry", json_row(k, t), qos=0)
    pace(rows, send, at_row={100: bad_spb, 150: bad_spb})
    time.sleep(1.0)
    m, _ = T.metrics(http)
    want = {"undecodable": 4, "unknown_alias": 2, "type_changed": 2, "unmapped_topic": 2,
            "not_numeric": 2}
    for r, n in want.items():
        got = m.get(f'faultline_bridge_bad_input_total{{reason="{r}"}}')
        check(got == n, f"bad input {r}: {got} counted for {n} sent")
    check(b.p.poll() is None, "the bridge is alive")
    late = [o for o in reader.json if o["stream"] == "pump1"]
    late2 = [o for o in reader.json if o["stream"] == "pump2"]
    n_expect = (rows - W) // STRIDE + 1
    check(len(late) >= n_expect - 2 and len(late2) >= n_expect - 2,
          f"reports kept flowing: {len(late)} and {len(late2)} of {n_expect}")
    log = b.logtext()
    check(log.count("(undecodable") <= 4, "bad input logged at a bounded rate")
    pub.loop_stop()
    teardown(b, d, broker, edge, reader)


def scenario_tls():
    tls = make_tls()
    broker = Broker("tls", tls=tls)
    d, fp = start_daemon("tls")
    cfg, http = write_bridge_config(
        "tls", broker, fp,
        {"url": f"mqtts://127.0.0.1:{broker.port}", "ca_file": tls["ca"],
         "cert_file": tls["client_crt"], "key_file": tls["client_key"]},
        {"map.pump2": {"source": "json", "topic": "plant/pump2/{tag}"}},
        # 26 messages a tick from one Python publisher over TLS: on a loaded
        # machine it falls behind its schedule by more than 0.1 s at times.
        {"publish": {"sparkplug": 0}, "bridge": {"delay": 0.5}})
    b = Bridge(cfg, http)
    check(b.wait("faultline_bridge_connected", lambda v: v == 1, 15) == 1,
          "bridge connected over TLS with a client certificate")
    reader = BusReader(broker, tls=tls)
    pub = client(broker, "json-tags", tls=tls)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    time.sleep(0.5)
    rows = 600
    tab, clean, sd = episode(rows)

    def send(k, t):
        for ch, ts, v in row_updates(tab, k, t):
            pub.publish(f"plant/pump2/{ch}", json.dumps({"ts": ts / 1000.0, "value": v}), qos=0)
    first_end = pace(rows, send)
    time.sleep(1.0)
    n_expect = (rows - W) // STRIDE + 1
    check(len(reader.json) >= n_expect - 2, f"{len(reader.json)} JSON reports over TLS")
    check_fault(pressure_of(reader.json), tab, clean, sd, seq0_of(first_end),
                "TLS/JSON per tag")
    check(reader.births["NBIRTH"] == 0, "sparkplug = 0 publishes no Sparkplug")
    m, _ = T.metrics(http)
    check(m.get("faultline_bridge_updates_total", 0) >= rows * 26 * 0.95,
          f"{m.get('faultline_bridge_updates_total')} tag updates over TLS")
    check(m.get("faultline_bridge_late_total", 1) <= rows * 26 * 0.01,
          f"{m.get('faultline_bridge_late_total')} updates late")
    pub.loop_stop()
    teardown(b, d, broker, reader)


def scenario_config():
    def write(name, text):
        path = os.path.join(TMP, name + ".ini")
        with open(path, "w") as f:
            f.write(text)
        return path

    base = (f"[bridge]\nmodel_config = {CONFIG}\n[map.pump1]\ngroup = plant\nnode = edge1\n"
            "device = pump1\npressure = Hydraulic/Pressure\n")
    p = subprocess.run([FL, "bridge", "--config", write("good", base), "--check"],
                       capture_output=True, text=True)
    check(p.returncode == 0 and "1 streams" in p.stdout, f"a good config passes: {p.stdout}"
          f"{p.stderr}")
    # The example as shipped, beside a faultline.ini: its relative
    # model_config is read from its own directory.
    rel = os.path.join(TMP, "etc")
    os.makedirs(rel, exist_ok=True)
    shutil.copy(CONFIG, os.path.join(rel, "faultline.ini"))
    shutil.copy(os.path.join(T.ROOT, "config", "bridge.ini"), os.path.join(rel, "bridge.ini"))
    p = subprocess.run([FL, "bridge", "--config", os.path.join(rel, "bridge.ini"), "--check"],
                       capture_output=True, text=True)
    check(p.returncode == 0, f"config/bridge.ini passes: {p.stdout}{p.stderr}")
    # 100 [map.*] sections beside pump1, each given in two parts: the second
    # part, after all the others, is looked up by its name (a new entry would
    # lack group and node, or count twice), and its channel key resolved.
    many = (base + "".join(f"[map.s{i}]\ngroup = g\nnode = n{i % 7}\n" for i in range(100))
            + "".join(f"[map.s{i}]\ndevice = d{i}\npressure = P{i}\n" for i in range(100)))
    p = subprocess.run([FL, "bridge", "--config", write("many_maps", many), "--check"],
                       capture_output=True, text=True)
    check(p.returncode == 0 and "101 streams" in p.stdout,
          f"101 [map.*] sections pass: {p.stdout}{p.stderr}")
    broken = {
        "url": (base + "[mqtt]\nurl = http://x\n", "url"),
        "unknown key": (base + "[mqtt]\ncolour = blue\n", "colour"),
        "unknown channel": (base + "no_such_channel = X\n", "no_such_channel"),
        "no model": ("[map.a]\ngroup = g\nnode = n\n", "model_config"),
        "no map": (f"[bridge]\nmodel_config = {CONFIG}\n", "map"),
        "bad stream id": (base + "[map.b]\nstream = a/b\ngroup = g\nnode = n\n", "stream"),
        "wildcard node": (base + "[map.c]\ngroup = g\nnode = +\n", "node"),
        "sparkplug without node": (base + "[map.d]\ngroup = g\n", "group and node"),
        "qos 2": (base + "[mqtt]\nqos = 2\n", "qos"),
        "timestamps": (base.replace("[map.pump1]", "timestamps = gps\n[map.pump1]"),
                       "timestamps"),
        "a stream twice among 100 maps": (
            base + "".join(f"[map.s{i}]\ngroup = g\nnode = n\ndevice = d{i}\n"
                           for i in range(100)) + "[map.s99]\nstream = s3\n",
            "s3 is mapped twice"),
    }
    for what, (text, word) in broken.items():
        p = subprocess.run([FL, "bridge", "--config", write(what.replace(" ", "_"), text),
                            "--check"], capture_output=True, text=True)
        check(p.returncode == 1 and word in p.stderr,
              f"{what}: exit {p.returncode}, the error names {word!r}: {p.stderr.strip()}")
    p = subprocess.run([FL, "bridge"], capture_output=True, text=True)
    check(p.returncode == 2 and "usage" in p.stderr, "no --config: usage, exit 2")
    # A wrong password: refused, retried, the bridge alive and healthy; and
    # systemd's notifications meanwhile.
    broker = Broker("auth", password=("plant", "right"))
    d, fp = start_daemon("auth")
    cfg, http = write_bridge_config("auth", broker, fp, {"username": "plant",
                                                         "password": "wrong"},
                                    {"map.pump1": SPB_MAP})
    import socket
    nsock = os.path.join(TMP, "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(nsock)
    ns.settimeout(0.2)

    def received():
        notes = []
        while True:
            try:
                notes.append(ns.recv(4096).decode())
            except socket.timeout:
                return notes
    b = Bridge(cfg, http, env={"NOTIFY_SOCKET": nsock, "WATCHDOG_USEC": "400000"})
    time.sleep(2.0)
    notes = received()
    check(any("READY=1" in n.split("\n") for n in notes), "READY=1 sent")
    wd = [n for n in notes if "WATCHDOG=1" in n.split("\n")]
    check(len(wd) >= 5, f"WATCHDOG=1 every 200 ms ({len(wd)} in about 2 s)")
    check(any("STATUS=broker down" in n for n in notes), "STATUS= says the broker is down")
    m, _ = T.metrics(http)
    check(m["faultline_bridge_connected"] == 0 and m["faultline_bridge_connects_total"] == 0,
          "a wrong password never connects")
    check(b.p.poll() is None and T.http_get(http, "/healthz")[0] == 200,
          "the bridge keeps running and answers /healthz")
    check("refused" in b.logtext() or "not authorised" in b.logtext().lower(),
          "the refusal is logged")
    teardown(b, d, broker)
    notes = received()
    check(any("STOPPING=1" in n.split("\n") for n in notes), "STOPPING=1 on SIGTERM")
    ns.close()


# The wide scenario's model: more modalities and channels than the bridge's
# tables held when they were sized at build time (64 and 128), rate 1, in
# pairs that follow one latent process each; a tiny model and schedule
# (width, not accuracy, is under test).
WIDE_MODS, WIDE_PER = 65, 2
WIDE_TRAIN_ROWS = 600
# Sanitized builds run 2-4x slower (tests/run.sh sets FAULTLINE_SANITIZED).
SLOW = 3 if os.environ.get("FAULTLINE_SANITIZED") else 1


def wide_data(path, rows, seed):
    names = [f"m{m:02d}_{k}" for m in range(WIDE_MODS) for k in "ab"[:WIDE_PER]]
    rng = random.Random(seed)
    shape = random.Random(3)  # one plant: the same gains and offsets in every recording
    lat = [0.0] * WIDE_MODS
    ph = [shape.uniform(0, 2 * math.pi) for _ in range(WIDE_MODS)]
    period = [shape.uniform(40, 200) for _ in range(WIDE_MODS)]
    gain = [shape.uniform(0.5, 2.0) for _ in names]
    off = [shape.uniform(-5, 5) for _ in names]
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for t in range(rows):
            for g in range(WIDE_MODS):
                lat[g] = 0.9 * lat[g] + rng.gauss(0, 0.3)
            sig = [lat[g] + 2 * math.sin(2 * math.pi * t / period[g] + ph[g])
                   for g in range(WIDE_MODS)]
            f.write(",".join(f"{off[c] + gain[c] * sig[c // WIDE_PER] + rng.gauss(0, 0.05):.4f}"
                             for c in range(len(names))) + "\n")
    return names


def scenario_wide():
    cfg = os.path.join(TMP, "wide.ini")
    with open(cfg, "w") as f:
        f.write(f"[model]\nwindow = {W}\nhidden = 16\nenc1 = 4\nenc2 = 4\nhead_hidden = 8\n"
                "embedding = 4\n[train]\nepochs1 = 2\nepochs2 = 1\nstride = 5\n")
        for m in range(WIDE_MODS):
            chans = ", ".join(f"m{m:02d}_{k}" for k in "ab"[:WIDE_PER])
            f.write(f"[modality.mod{m:02d}]\nchannels = {chans}\n")
    mods = T.modalities(cfg)
    chans = [(m, c, rate) for m, rate, cs in mods for c in cs]
    check(len(mods) > 64 and len(chans) > 128,
          f"the model is wider than the old tables: {len(mods)} modalities, {len(chans)} channels")
    last_mod, last_ch, _ = chans[-1]
    train = os.path.join(TMP, "wide_train.csv")
    wide_data(train, WIDE_TRAIN_ROWS, 1)
    model = os.path.join(TMP, "wide.model")
    t0 = time.time()
    p = subprocess.run([FL, "train", "--config", cfg, "--data", train, "--out", model, "--quiet"],
                       capture_output=True, text=True, timeout=120 * SLOW)
    check(p.returncode == 0, f"train the wide model: {p.stderr.strip()[-300:]}")
    print(f"wide model: {len(chans)} channels in {len(mods)} modalities, trained in "
          f"{time.time() - t0:.1f} s")

    broker = Broker("wide")
    d, fp = start_daemon("wide", cfg, model)
    # The last channel under a name of the map's: the map's table reaches it.
    last_metric = "Line7/Last"
    wmap = {"source": "sparkplug", "group": "plant", "node": "edge1", "device": "wide1",
            last_ch: last_metric}
    bcfg, http = write_bridge_config("wide", broker, fp, {}, {"map.wide1": wmap},
                                     {"bridge": {"delay": 0.5}}, model_config=cfg)
    p = subprocess.run([FL, "bridge", "--config", bcfg, "--check"], capture_output=True,
                       text=True)
    check(p.returncode == 0 and "1 streams" in p.stdout,
          f"--check takes the wide model: {p.stdout}{p.stderr}")
    b = Bridge(bcfg, http)
    check(b.wait("faultline_bridge_connected", lambda v: v == 1, 15 * SLOW) == 1,
          "bridge connected with the wide model")
    reader = BusReader(broker)
    edge = EdgeNode(broker, "plant", "edge1", "wide1", channels=chans,
                    names={last_ch: last_metric})
    b.wait("faultline_bridge_births_total", lambda v: v >= 2, 10 * SLOW)

    rows, fault_at, fault_rows = 420, 240, 120
    episode_csv = os.path.join(TMP, "wide_episode.csv")
    wide_data(episode_csv, rows, 7)
    tab = T.Table(episode_csv, mods)
    j = tab.column(last_ch)
    vals = [r[j] for r in tab.rows]
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    clean = list(vals)
    for r in range(fault_at, fault_at + fault_rows):
        tab.rows[r][j] += 8 * sd
    first_end = pace(rows, lambda k, t: edge.ddata(row_updates(tab, k, t, chans)))
    time.sleep(1.0 * SLOW)
    first_seq = seq0_of(first_end)
    n_expect = (rows - W) // STRIDE + 1
    key = f"{last_mod}/{last_ch}"

    # JSON: every modality and channel named, the last ones included.
    reps = [o for o in reader.json if o["stream"] == "wide1"]
    check(len(reps) >= n_expect - 2, f"{len(reps)} JSON reports for {n_expect} windows")
    named = [o for o in reps if len(o["modalities"]) == len(mods) and
             len(o["channels"]) == len(chans) and key in o["channels"]]
    check(len(named) == len(reps) and reps,
          f"every JSON report names all {len(mods)} modalities and {len(chans)} channels, "
          f"{key} among them ({len(named)} of {len(reps)})")
    scored = [o for o in reps if o["modalities"].get(last_mod) is not None]
    check(len(scored) >= len(reps) - 1, f"{last_mod} scored in {len(scored)} of {len(reps)}")
    # Arrival in faultlined: a healthy channel's corrected value is its input.
    inside = [o for o in reps if W <= o["end_seq"] - first_seq < rows]
    row_of = {id(o): o["end_seq"] - first_seq for o in inside}
    healthy = [o for o in inside if o["channels"][key]["faulty"] is False]
    got = sum(1 for o in healthy
              if o["channels"][key]["corrected"] is not None and
              math.isclose(o["channels"][key]["corrected"], tab.rows[row_of[id(o)]][j],
                           rel_tol=1e-5, abs_tol=1e-4))
    check(len(healthy) >= 5 and got >= len(healthy) * 0.9,
          f"faultlined received the last channel as published: corrected = input in {got} of "
          f"{len(healthy)} healthy windows")
    raw_ok = sum(1 for o in inside if o["channels"][key]["raw"] is not None and
                 math.isclose(o["channels"][key]["raw"], tab.rows[row_of[id(o)]][j],
                              rel_tol=1e-5, abs_tol=1e-4))
    check(raw_ok >= len(inside) * 0.9,
          f"raw {key} on the bus equals the published value ({raw_ok}/{len(inside)})")
    full = [o for o in inside if o["missing"] == 0]
    check(len(full) >= len(inside) * 0.9,
          f"no value missing in {len(full)} of {len(inside)} windows: every channel arrives")
    # The offset in the last channel flagged in the last modality.
    in_fault = [o for o in inside if fault_at + 10 <= o["end_seq"] - first_seq < fault_at +
                fault_rows]
    flagged = [o for o in in_fault if o["anomaly"] and o["faulty_modality"] == last_mod]
    check(len(in_fault) >= 4 and len(flagged) >= len(in_fault) // 2,
          f"the fault flagged in {last_mod} in {len(flagged)} of {len(in_fault)} fault reports "
          f"(others: {sorted(set(o['faulty_modality'] for o in in_fault))})")
    marked = [o for o in in_fault if o["channels"][key]["faulty"]]
    if marked:
        e_in = sum(abs(o["channels"][key]["raw"] - clean[o["end_seq"] - first_seq])
                   for o in marked)
        e_out = sum(abs(o["channels"][key]["corrected"] - clean[o["end_seq"] - first_seq])
                    for o in marked)
        check(e_out < e_in, f"corrected {key} nearer the clean signal than the raw one "
                            f"({e_out / len(marked) / sd:.2f} sd vs {e_in / len(marked) / sd:.2f})")
    check(len(marked) >= 3, f"{key} marked faulty in {len(marked)} fault reports")

    # Sparkplug: the DBIRTH's metrics, aliases unique, the last ones named.
    spb_names = {f"score/{last_mod}", f"raw/{key}", f"corrected/{key}", f"faulty/{key}"}
    with reader.lock:
        born = [n for (dev, _), n in reader.alias.items() if dev == "wide1"]
    n_metrics = 6 + len(mods) + 3 * len(chans)
    check(len(born) == n_metrics and spb_names <= set(born),
          f"DBIRTH: {len(born)} metrics by distinct aliases for {n_metrics}, the last "
          f"modality's and channel's among them")
    sreps = spb_reports(reader, "wide1")
    check(len(sreps) >= n_expect - 2, f"{len(sreps)} Sparkplug reports for {n_expect} windows")
    by_seq = {o["seq"]: o for o in reps}
    same = sum(1 for v in sreps if int(v["report_seq"]) in by_seq and
               v["faulty_modality"] == by_seq[int(v["report_seq"])]["faulty_modality"] and
               math.isclose(v[f"corrected/{key}"],
                            by_seq[int(v["report_seq"])]["channels"][key]["corrected"] or
                            math.nan, rel_tol=1e-5) and
               math.isclose(v[f"score/{last_mod}"],
                            by_seq[int(v["report_seq"])]["modalities"][last_mod] or math.nan,
                            rel_tol=1e-5))
    check(same >= len(sreps) - 1,
          f"DDATA and JSON agree on {last_mod} and {key} in {same} of {len(sreps)} reports")
    sflag = [v for v in sreps if v["anomaly"] and v["faulty_modality"] == last_mod]
    check(len(sflag) >= 3, f"DDATA: {len(sflag)} reports with {last_mod} at fault")

    m, _ = T.metrics(http)
    check(m.get("faultline_bridge_updates_total", 0) >= rows * len(chans) * 0.95,
          f"{m.get('faultline_bridge_updates_total')} tag updates taken for "
          f"{rows * len(chans)} sent")
    check(all(m.get(f'faultline_bridge_bad_input_total{{reason="{r}"}}', 1) == 0
              for r in ("undecodable", "unknown_alias", "type_changed", "unmapped_topic", "seq",
                        "not_numeric")),
          "no bad input counted")
    check(m.get("faultline_bridge_unmapped_metrics_total", -1) == 0, "every metric mapped")
    print(f"wide: {len(reps)} JSON and {len(sreps)} DDATA reports; {got}/{len(healthy)} healthy "
          f"windows carry {key} as published; fault flagged in {last_mod} in {len(flagged)} of "
          f"{len(in_fault)}")
    teardown(b, d, broker, edge, reader)
    wider_frames()


def wider_frames():
    """Wider still, with no model needed: the bridge over a configuration of
    1,500 channels in 300 modalities and two streams, its frames read by a
    SUB socket in faultlined's place.  Its edge node's metrics keep distinct
    aliases across its devices, and a value published for the last channel
    is the last sample of the frame's last block."""
    import zmq
    n_mod, per = 300, 5
    cfg = os.path.join(TMP, "wider.ini")
    with open(cfg, "w") as f:
        for m in range(n_mod):
            f.write(f"[modality.w{m:03d}]\nchannels = " +
                    ", ".join(f"w{m:03d}_{k}" for k in range(per)) + "\n")
    first, last = "w000_0", f"w{n_mod - 1:03d}_{per - 1}"
    broker = Broker("wider")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    port = T.free_port()
    sub.bind(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"frame/wideB")
    fp = {"in": port, "out": T.free_port()}  # no reports: births carry nulls
    bcfg, http = write_bridge_config(
        "wider", broker, fp, {}, {"map.wideA": {"source": "sparkplug", "group": "plant",
                                                "node": "edge1", "device": "wideA"},
                                  "map.wideB": {"source": "json",
                                                "topic": "plant/wideB/telemetry"}},
        {"bridge": {"delay": 0.1}}, model_config=cfg)
    b = Bridge(bcfg, http)
    check(b.wait("faultline_bridge_connected", lambda v: v == 1, 15 * SLOW) == 1,
          "bridge connected with 1,500 channels")
    reader = BusReader(broker)
    n_metrics = 6 + n_mod + 3 * n_mod * per
    t0 = time.time()
    while time.time() - t0 < 10 * SLOW:
        with reader.lock:
            if len(reader.birth_aliases) == 2:
                break
        time.sleep(0.1)
    with reader.lock:
        births = dict(reader.birth_aliases)
    aliases = [a for dev in ("wideA", "wideB") for a in births.get(dev, [])]
    check(all(len(births.get(dev, [])) == n_metrics for dev in ("wideA", "wideB")),
          f"a DBIRTH of {n_metrics} metrics per stream: "
          f"{ {dev: len(a) for dev, a in births.items()} }")
    check(len(set(aliases)) == len(aliases),
          f"aliases distinct across the edge node's devices ({len(set(aliases))} of "
          f"{len(aliases)})")
    pub = client(broker, "json-wider")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    found = None
    t0 = time.time()
    while found is None and time.time() - t0 < 10 * SLOW:
        pub.publish("plant/wideB/telemetry",
                    json.dumps({"values": {first: 1.5, last: 42.25}}), qos=0)
        while sub.poll(20):
            _, data = sub.recv_multipart()
            f = pb.Frame()
            f.ParseFromString(data)
            blk = f.blocks[-1]
            if (len(f.blocks) == n_mod and blk.modality == f"w{n_mod - 1:03d}" and
                    blk.channels == per and blk.samples[-1] == 42.25 and
                    f.blocks[0].samples[0] == 1.5):
                found = f
    check(found is not None, f"a frame of {n_mod} blocks carries {first} and {last} as "
                             "published over JSON")
    pub.loop_stop()
    pub.disconnect()
    reader.close()
    check(b.stop() == 0, "bridge exits 0 on SIGTERM")
    sub.close(0)
    ctx.term()
    broker.stop()


if __name__ == "__main__":
    try:
        {"sparkplug": scenario_sparkplug, "restart": scenario_restart, "bad": scenario_bad,
         "tls": scenario_tls, "config": scenario_config, "wide": scenario_wide}[SCENARIO]()
    finally:
        if T.failures:
            # The logs of the processes, for the test log.
            for root, _, files in os.walk(TMP):
                for f in files:
                    if f.endswith(".log"):
                        with open(os.path.join(root, f), errors="replace") as fh:
                            text = fh.read()
                        print(f"---- {f} (last 40 lines)", file=sys.stderr)
                        print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
        shutil.rmtree(TMP, ignore_errors=True)
    T.finish("bridge " + SCENARIO)
