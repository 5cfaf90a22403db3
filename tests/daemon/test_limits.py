#!/usr/bin/env python3
"""Process test of faultlined's limits and of its metrics endpoint's surface.

usage: test_limits.py FAULTLINED MODEL EPISODE_CSV CONFIG

- [input] max_streams and max_message_bytes are configurable, every frame over
  them is counted, and hitting either logs one warning per [log]
  limit_interval, not one per frame (the next line counts the quiet hits).
- [metrics] max_connections: one connection over the cap is closed at once and
  counted (faultline_http_connections_refused_total); the endpoint serves again
  once connections close.
- The endpoint answers GET and HEAD only (405 otherwise), refuses request
  bodies, bounds the request line and headers ([metrics] max_request_bytes:
  414/431), listens on loopback by default, and /metrics names no secret (the
  CurveZMQ secret key, its path, the authorised keys' directory).
"""
import os
import socket
import sys
import tempfile
import time

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

FLD, MODEL, EPISODE, CONFIG = map(os.path.abspath, sys.argv[1:5])
TMP = tempfile.mkdtemp(prefix="fld-limits-")
pb = T.load_proto(TMP)
MODS = T.modalities(CONFIG)


def start(name, **sections):
    path, ports = T.daemon_config(TMP, name, MODEL, CONFIG, **sections)
    d = T.Daemon(FLD, path)
    d.wait_http(ports["http"])
    return d, ports


def raw_http(port, data, timeout=5):
    """Sends raw bytes, returns the status line's code (0: closed without one)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError:
        buf = b""
    finally:
        s.close()
    parts = buf.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def lines(d, needle):
    return [ln for ln in d.logtext().splitlines() if needle in ln]


def limits():
    tab = T.Table(EPISODE, MODS)
    d, ports = start("limits",
                     input={"max_streams": 2, "max_message_bytes": 2048},
                     metrics={"max_connections": 3, "max_request_bytes": 1024},
                     log={"limit_interval": 3})
    ctx = zmq.Context()
    pub, ok = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
    check(ok, "limits: the daemon subscribes")
    sent = 0

    def burst(seq0):
        nonlocal sent
        for k in range(40):  # 40 oversize frames
            pub.send_multipart([b"frame/big", b"\x0a" + b"x" * 3000])
        for s in range(5):  # 5 streams of 20 frames: 3 over the cap of 2
            for i in range(20):
                pub.send_multipart([f"frame/s{s}".encode(), tab.frame(pb, f"s{s}", seq0 + i, i)
                                    .SerializeToString()])
        sent += 40 + 100

    burst(0)
    T.wait_metric(ports["http"], "faultline_frames_received_total", lambda v: v >= sent)
    m, _ = T.metrics(ports["http"])
    check(m.get('faultline_frames_rejected_total{reason="oversize"}') == 40,
          "limits: 40 oversize frames counted")
    check(m.get('faultline_frames_dropped_total{reason="stream_limit"}') == 60,
          "limits: 60 frames of 3 streams over max_streams = 2 dropped and counted")
    check(m.get("faultline_streams") == 2 and m.get("faultline_streams_limit") == 2,
          "limits: 2 streams held, limit 2 exposed")
    check(len(lines(d, "max_message_bytes")) == 1,
          "limits: 40 oversize frames log one warning, not 40: %d" % len(lines(d, "max_message_bytes")))
    check(len(lines(d, "max_streams")) == 1,
          "limits: 60 dropped frames log one warning: %d" % len(lines(d, "max_streams")))
    time.sleep(3.3)
    burst(20)
    T.wait_metric(ports["http"], "faultline_frames_received_total", lambda v: v >= sent)
    big, streams = lines(d, "max_message_bytes"), lines(d, "max_streams")
    check(len(big) == 2 and "39 more times" in big[1],
          "limits: the next interval's line counts the 39 quiet hits: %r" % big)
    check(len(streams) == 2 and "59 more times" in streams[1],
          "limits: the stream cap's second line counts 59 quiet hits: %r" % streams)
    m, _ = T.metrics(ports["http"])
    total = (m["faultline_frames_processed_total"] +
             sum(v for k, v in m.items() if k.startswith("faultline_frames_rejected_total")) +
             sum(v for k, v in m.items() if k.startswith("faultline_frames_dropped_total")))
    check(total == m["faultline_frames_received_total"] == sent,
          f"limits: every frame accounted for ({total} of {sent})")

    # HTTP: methods, bodies, sizes.
    port = ports["http"]
    for meth in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]:
        code = raw_http(port, f"{meth} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        .encode())
        check(code == 405, f"limits: {meth} /metrics is 405, got {code}")
    code = raw_http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Connection: close\r\n\r\nhello")
    check(code in (0, 405, 413), f"limits: a request body is refused, got {code}")
    code = raw_http(port, b"GET /metrics?" + b"a" * 4000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    check(code in (0, 414, 431), f"limits: a 4 kB request line is refused, got {code}")
    code = raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8000 +
                    b"\r\nConnection: close\r\n\r\n")
    check(code in (0, 413, 431), f"limits: an 8 kB header is refused, got {code}")
    code = raw_http(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(code == 200, f"limits: HEAD /healthz is 200, got {code}")

    # Connections: 3 idle ones fill the cap; a fourth is closed unanswered.
    # The daemon accepts in its loop: until it has taken all three, a fourth
    # may still be served, so try for a few seconds (MHD times idle ones out
    # after 10 s).
    # Each sends half a request (slowloris): a connection with no data may
    # wait in the kernel (deferred accept) where no cap can see it.
    # Connections of the refused requests above may linger until MHD's
    # 10 s idle timeout: start from none open but the scrape's own.
    v = T.wait_metric(port, "faultline_http_connections", lambda v: v == 1, timeout=15)
    check(v == 1, f"limits: the earlier connections close ({v} open)")
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    for s in idle:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
    t_end = time.time() + 5
    code = -1
    while code != 0 and time.time() < t_end:
        time.sleep(0.1)
        code = raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(code == 0, f"limits: a connection over max_connections = 3 is refused, got {code}")
    for s in idle:
        s.close()
    time.sleep(0.3)
    v = T.wait_metric(port, "faultline_http_connections_refused_total", lambda v: v >= 1,
                      timeout=10)
    check(v is not None and v >= 1, "limits: the refused connection is counted")
    check(len(lines(d, "max_connections")) == 1, "limits: the refusal is logged once")

    # Loopback only by default: the listener is 127.0.0.1 in /proc/net/tcp.
    with open("/proc/net/tcp") as f:
        rows = [ln.split() for ln in f.readlines()[1:]]
    listen = [r[1] for r in rows if r[3] == "0A" and r[1].endswith(":%04X" % port)]
    check(listen == ["0100007F:%04X" % port], f"limits: metrics listen on loopback only: {listen}")
    check(d.stop() == 0, "limits: clean exit")
    pub.close(linger=0)
    ctx.destroy(linger=0)


def secrets():
    srv_pub, srv_sec = zmq.curve_keypair()
    cli_pub, _ = zmq.curve_keypair()
    keydir = os.path.join(TMP, "clients-dir")
    os.mkdir(keydir)
    keyfile = os.path.join(TMP, "server-secret.key")
    with open(keyfile, "w") as f:
        f.write(srv_sec.decode() + "\n")
    with open(os.path.join(keydir, "c.key"), "w") as f:
        f.write(cli_pub.decode() + "\n")
    d, ports = start("secrets", security={"curve": 1, "secret_key": keyfile,
                                          "authorized_keys": keydir})
    _, text = T.metrics(ports["http"])
    status, health = T.http_get(ports["http"], "/healthz")
    for what, s in [("the secret key", srv_sec.decode()), ("its path", keyfile),
                    ("the keys directory", keydir), ("a client key", cli_pub.decode())]:
        check(s not in text and s not in health, f"secrets: /metrics does not show {what}")
    check(d.stop() == 0, "secrets: clean exit")


try:
    limits()
    secrets()
except Exception as e:  # a crash of the test is a failure with its message
    import traceback
    traceback.print_exc()
    T.failures.append(f"limits: {e}")
T.finish("limits")
