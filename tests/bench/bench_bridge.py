#!/usr/bin/python3
"""Tag updates per second `faultline bridge` sustains on one core into
faultlined: a real mosquitto, publisher processes (paho-mqtt) acting as
Sparkplug B edge nodes, each device sending one DDATA per tick with every
channel's values by alias (26 updates: 2 vibration channels at rate 10 and 6
at rate 1), the bridge, and faultlined taking the frames (ingest only, no
scoring, so that the bridge is what is measured).

usage: bench_bridge.py FAULTLINED FAULTLINE MODEL EPISODE_CSV CONFIG
       [--devices N] [--publishers P] [--tick-ms T] [--seconds S]
       [--batch TICKS_PER_DDATA] [--delay S]

Prints the offered and taken update rates, the bridge's CPU time (all its
threads) and the updates per CPU second: the rate one core sustains.
Exit 77 when mosquitto or paho is missing.
"""
import argparse
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))
import fldtest as T  # noqa: E402

try:
    import paho.mqtt.client as mqtt
except ImportError:
    print("SKIP: python3-paho-mqtt is not installed")
    sys.exit(77)
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
if not os.path.exists(MOSQUITTO):
    print("SKIP: mosquitto is not installed")
    sys.exit(77)

ap = argparse.ArgumentParser()
ap.add_argument("fld")
ap.add_argument("fl")
ap.add_argument("model")
ap.add_argument("episode")
ap.add_argument("config")
ap.add_argument("--devices", type=int, default=40)
ap.add_argument("--publishers", type=int, default=2)
ap.add_argument("--tick-ms", type=int, default=10)
ap.add_argument("--seconds", type=float, default=15)
ap.add_argument("--batch", type=int, default=10)
ap.add_argument("--delay", type=float, default=1.0)
a = ap.parse_args()
a.fld, a.fl, a.model, a.episode, a.config = map(os.path.abspath, (a.fld, a.fl, a.model, a.episode, a.config))
TMP = tempfile.mkdtemp(prefix="flb-bench-")
T.load_proto(TMP)
subprocess.run(["protoc", "--proto_path=" + os.path.join(T.ROOT, "proto"), "--python_out=" + TMP,
                os.path.join(T.ROOT, "proto", "sparkplug_b.proto")], check=True)
import sparkplug_b_pb2 as spb  # noqa: E402

MODS = T.modalities(a.config)
CHANNELS = [(m, c, rate) for m, rate, chans in MODS for c in chans]
WIDTH = sum(r for _, _, r in CHANNELS)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def publisher(port, devices, tick_ms, batch, seconds, start_ms, rows, out):
    """One edge node per process with its share of the devices."""
    node = f"edge{devices[0]}"
    c = mqtt.Client(client_id="bench-" + node)
    c.connect("127.0.0.1", port)
    c.loop_start()
    seq = 0

    def send(kind, dev, p):
        nonlocal seq
        p.seq = seq
        seq = (seq + 1) % 256
        c.publish(f"spBv1.0/bench/{kind}/{node}" + (f"/d{dev}" if dev is not None else ""),
                  p.SerializeToString(), qos=0)
    p = spb.Payload(timestamp=int(time.time() * 1000))
    p.metrics.add(name="bdSeq", datatype=8, long_value=0)
    seq = 0
    send("NBIRTH", None, p)
    for d in devices:
        p = spb.Payload(timestamp=int(time.time() * 1000))
        for i, (_, ch, _) in enumerate(CHANNELS):
            p.metrics.add(name=ch, alias=d * 100 + i + 1, datatype=9, float_value=0.0)
        send("DBIRTH", d, p)
    sent = 0
    n_ticks = int(seconds * 1000 / tick_ms)
    late = 0
    # An edge node sends a device's values of `batch` ticks in one DDATA
    # (each value with its own timestamp), as edge nodes that buffer do.
    for k0 in range(0, n_ticks, batch):
        t0 = start_ms + k0 * tick_ms
        d = t0 / 1000.0 - time.time()
        if d > 0:
            time.sleep(d)
        elif d < -0.05:
            late += 1
        for dev in devices:
            p = spb.Payload(timestamp=t0)
            for k in range(k0, min(n_ticks, k0 + batch)):
                row = rows[k % len(rows)]
                t_end = start_ms + (k + 1) * tick_ms
                j = 0
                for i, (_, ch, rate) in enumerate(CHANNELS):
                    step = tick_ms // rate
                    for q in range(rate):
                        p.metrics.add(alias=dev * 100 + i + 1,
                                      timestamp=t_end - tick_ms + (q + 1) * step,
                                      float_value=row[j])
                        j += 1
                sent += WIDTH
            send("DDATA", dev, p)
    time.sleep(0.5)
    c.loop_stop()
    c.disconnect()
    out.put((sent, late))


def main():
    port = T.free_port()
    conf = os.path.join(TMP, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                + ("user root\n" if os.geteuid() == 0 else ""))
    broker = T.spawn([MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    fp = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
    fcfg = os.path.join(TMP, "fld.ini")
    T.write_config(fcfg, a.config, {
        "model": {"file": a.model},
        "input": {"endpoint": f"tcp://127.0.0.1:{fp['in']}", "bind": 1, "max_streams": 256,
                  "rcvhwm": 0},
        "output": {"endpoint": f"tcp://127.0.0.1:{fp['out']}", "score": 0},
        "metrics": {"listen": f"127.0.0.1:{fp['http']}"},
    })
    d = T.Daemon(a.fld, fcfg)
    d.wait_http(fp["http"])
    http = T.free_port()
    bcfg = os.path.join(TMP, "bridge.ini")
    with open(bcfg, "w") as f:
        f.write(f"[bridge]\nmodel_config = {a.config}\ntick = {a.tick_ms / 1000}\n"
                f"stale = 1\ndelay = {a.delay}\ndepth = 4096\n[mqtt]\nurl = mqtt://127.0.0.1:{port}\nqos = 0\n"
                f"[faultlined]\nframes = tcp://127.0.0.1:{fp['in']}\n"
                f"reports = tcp://127.0.0.1:{fp['out']}\n[publish]\nsparkplug = 0\njson = 0\n"
                f"[metrics]\nlisten = 127.0.0.1:{http}\n")
        per = math.ceil(a.devices / a.publishers)
        for i in range(a.devices):
            f.write(f"[map.s{i}]\ngroup = bench\nnode = edge{(i // per) * per}\n"
                    f"device = d{i}\n")
    log = open(os.path.join(TMP, "bridge.log"), "w")
    b = T.spawn([a.fl, "bridge", "--config", bcfg], stdout=log, stderr=log)
    t0 = time.time()
    while time.time() - t0 < 15:
        if b.poll() is not None:
            sys.exit("the bridge exited:\n" + open(log.name).read())
        try:
            if T.metrics(http)[0].get("faultline_bridge_connected") == 1:
                break
        except OSError:
            pass
        time.sleep(0.1)
    tab = T.Table(a.episode, MODS)
    rows = []
    for r in tab.rows[:200]:
        vals = []
        col = {n: i for i, n in enumerate(tab.head)}
        for _, ch, rate in CHANNELS:
            vals += [r[col[ch]]] if rate == 1 else [r[col[f"{ch}.{q}"]] for q in range(rate)]
        rows.append(vals)
    start_ms = (int(time.time() * 1000) // a.tick_ms + 100) * a.tick_ms
    out = mp.Queue()
    procs = []
    for p in range(a.publishers):
        devs = list(range(p * per, min(a.devices, (p + 1) * per)))
        procs.append(mp.Process(target=publisher, args=(port, devs, a.tick_ms, a.batch, a.seconds,
                                                        start_ms, rows, out)))
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_ms / 1000 - time.time()) + 1.0)
    m0, _ = T.metrics(http)
    c0, w0 = cpu_seconds(b.pid), time.time()
    time.sleep(a.seconds - 2.0)
    m1, _ = T.metrics(http)
    c1, w1 = cpu_seconds(b.pid), time.time()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    time.sleep(0.5)
    m2, _ = T.metrics(http)
    fm, _ = T.metrics(fp["http"])
    upd = m1["faultline_bridge_updates_total"] - m0["faultline_bridge_updates_total"]
    cpu = c1 - c0
    wall = w1 - w0
    offered = sum(s for s, _ in results) / a.seconds
    print(f"devices {a.devices}, publishers {a.publishers}, tick {a.tick_ms} ms, "
          f"{a.batch} ticks per DDATA, delay {a.delay} s, {a.seconds:.0f} s")
    print(f"offered      {offered:10.0f} updates/s ({sum(x for _, x in results)} ticks the "
          f"publishers sent late)")
    print(f"taken        {upd / wall:10.0f} updates/s over {wall:.1f} s")
    print(f"bridge CPU   {cpu / wall:10.2f} cores")
    print(f"per core     {upd / cpu if cpu > 0 else 0:10.0f} updates per CPU second")
    print(f"frames out   {(m1['faultline_bridge_frames_total'] - m0['faultline_bridge_frames_total']) / wall:10.0f} /s; "
          f"faultlined received {fm.get('faultline_frames_received_total', 0):.0f}")
    print(f"late {m2['faultline_bridge_late_total']:.0f}, overflow "
          f"{m2['faultline_bridge_overflow_total']:.0f}, frames failed "
          f"{m2['faultline_bridge_frames_failed_total']:.0f}, bad input "
          f"{sum(v for k, v in m2.items() if k.startswith('faultline_bridge_bad_input_total')):.0f}")
    b.terminate()
    b.wait(10)
    d.stop()
    broker.terminate()
    broker.wait(10)
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
