"""faultlined and `faultline proxy` run under their units' own sandbox.

No systemd runs on the test machine, so the parts of the sandbox that systemd
builds as seccomp filters are read from the unit files and applied with
libseccomp by sandbox_exec: SystemCallFilter= (the groups expanded by
`systemd-analyze syscall-filter`, the lines combined in order as systemd
combines them: the first decides allow- or deny-listing, later allow lines
add calls, later "~" lines remove them), SystemCallErrorNumber=,
RestrictAddressFamilies=, MemoryDenyWriteExecute=, RestrictRealtime=,
NoNewPrivileges=, and an unprivileged user for DynamicUser=.  So the test
follows the unit files when they change.  The mount, namespace and
capability settings are not applied (they need systemd or a container).

  daemon   faultlined under faultlined.service's sandbox (and under every
           other unit of the daemon whose filter differs): it serves a real
           stream over ZeroMQ, its tuning worker runs under SCHED_IDLE and
           finishes a job, a SIGHUP reload succeeds, /metrics answers, and it
           exits 0 on SIGTERM.
  control  the same daemon under the same sandbox less sched_setscheduler
           (as a unit that denies @resources), then less AF_NETLINK: libzmq
           aborts at start in both.  This proves that the harness applies the
           filters, so the daemon's pass above means something.
  proxy    `faultline proxy` under faultline-proxy@.service's sandbox
           forwards a message and answers /metrics and /healthz.

argv: sandbox_exec faultlined faultline model episode config unit...
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

SANDBOX, FLD, FL, MODEL, EPISODE, CONFIG = map(os.path.abspath, sys.argv[1:7])
UNITS = sys.argv[7:]
NOBODY = (65534, 65534)
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}

sa = shutil.which("systemd-analyze")
if not sa:
    print("SKIP: systemd-analyze not found (Debian package systemd): the unit's "
          "system call groups cannot be expanded")
    sys.exit(77)


def syscall_groups():
    """{"@group": [member, ...]} as this systemd defines them."""
    out = subprocess.run([sa, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and cur is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                cur.append(item)
        else:
            cur = None
    return groups


GROUPS = syscall_groups()


def expand(items, seen=None):
    seen = set() if seen is None else seen
    out = set()
    for it in items:
        if it.startswith("@"):
            if it in seen:
                continue
            seen.add(it)
            out |= expand(GROUPS.get(it, []), seen)
        else:
            out.add(it.split(":")[0])
    return out


def unit_directives(path):
    """[(key, value)] of the [Service] section, in order."""
    out, sec = [], None
    for line in open(path):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            sec = line
            continue
        if sec == "[Service]" and "=" in line:
            k, v = line.split("=", 1)
            out.append((k.strip(), v.strip()))
    return out


def policy(path, deny_extra=()):
    """The text sandbox_exec reads, for one unit file."""
    allow, mode = set(), None
    lines, errno_name = [], "EPERM"
    for k, v in unit_directives(path):
        if k == "SystemCallFilter":
            if not v:
                allow, mode = set(), None
                continue
            invert = v.startswith("~")
            names = expand(v.lstrip("~").split())
            if mode is None:
                mode = "deny" if invert else "allow"
                if mode == "allow":
                    allow = expand(["@default"])  # systemd adds it to every allow list
            if mode == "allow":
                allow = allow - names if invert else allow | names
        elif k == "SystemCallErrorNumber":
            errno_name = v
        elif k == "RestrictAddressFamilies":
            check(not v.startswith("~"), f"{path}: RestrictAddressFamilies is an allow list")
            lines += [f"family {FAMILIES[f]}" for f in v.split()]
        elif k == "MemoryDenyWriteExecute" and v == "yes":
            lines.append("mdwe")
        elif k == "RestrictRealtime" and v == "yes":
            lines.append("norealtime")
        elif k == "DynamicUser" and v == "yes":
            lines.append("user %d %d" % NOBODY)
    check(mode == "allow", f"{os.path.basename(path)}: SystemCallFilter= is an allow list")
    allow -= set(deny_extra)
    import errno
    lines.append(f"errno {getattr(errno, errno_name)}")
    lines += [f"allow {n}" for n in sorted(allow)]
    return "\n".join(lines) + "\n", allow


TMP = tempfile.mkdtemp(prefix="fl-sandbox-")
os.chmod(TMP, 0o777)  # the sandboxed user writes its state here
pb = T.load_proto(TMP)
STRIDE = 5


class Sandboxed(T.Daemon):
    def __init__(self, pol, argv, log):
        self.log = open(log, "w")
        self.logpath = log
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        self.p = T.spawn([SANDBOX, pol, "--"] + argv, stdout=self.log,
                         stderr=self.log, env=env)


def write_policy(name, text):
    p = os.path.join(TMP, name + ".policy")
    with open(p, "w") as f:
        f.write(text)
    return p


def daemon_config(name):
    ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
    state = os.path.join(TMP, name + "-state")
    os.makedirs(state)
    os.chmod(state, 0o777)
    over = {
        "model": {"file": MODEL},
        "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "bind": 1},
        "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}", "stride": STRIDE},
        "metrics": {"listen": f"127.0.0.1:{ports['http']}", "status_interval": 0.5},
        "log": {"level": "info"},
        # The worker under SCHED_IDLE, as shipped; a fast schedule so that a
        # job ends within the stream.
        "tune": {"enabled": 1, "idle": 1, "buffer": 256, "min_windows": 48, "gate": 1.0,
                 "span": 1, "steps": 20, "max_updates_per_hour": 360000, "cpu_share": 1.0,
                 "checkpoint": os.path.join(state, "tuned.ckpt")},
    }
    path = os.path.join(TMP, name + ".ini")
    T.write_config(path, CONFIG, over)
    os.chmod(path, 0o644)
    return path, ports


def thread_policy(pid, name):
    """The scheduling policy (stat field 41) of the thread called name."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            return int(rest[41 - 3])
        except (OSError, IndexError, ValueError):
            continue
    return None


def scenario_daemon(unit):
    tag = os.path.basename(unit)
    text, allow = policy(unit)
    check("sched_setscheduler" in allow,
          f"{tag}: sched_setscheduler allowed (libzmq's threads and the tuning worker need it)")
    pol = write_policy("daemon", text)
    cfg, ports = daemon_config("daemon")
    d = Sandboxed(pol, [FLD, "--config", cfg], os.path.join(TMP, "daemon.log"))
    try:
        d.wait_http(ports["http"])
    except RuntimeError as e:
        check(False, f"{tag}: faultlined starts under the sandbox: {e}")
        d.stop()
        return
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{ports['out']}")
    check(T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1) >= 1,
          f"{tag}: the subscriber is seen")
    rows = 6000
    csv = os.path.join(TMP, "stream.csv")
    sim = subprocess.run([FL, "simulate", "--rows", str(rows), "--seed", "5", "--out", csv],
                         capture_output=True, text=True)
    check(sim.returncode == 0, "simulate: " + sim.stderr.strip())
    reps = []
    th = threading.Thread(target=lambda: reps.extend(T.collect(sub, pb, 200, timeout=120)))
    th.start()
    rp = T.spawn([FL, "replay", "--in", csv, "--connect", f"tcp://127.0.0.1:{ports['in']}",
                  "--config", CONFIG, "--stream", "plant", "--rate", "600"],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pol_idle, t_end = None, time.time() + 60
    while pol_idle is None and time.time() < t_end and rp.poll() is None:
        time.sleep(0.1)
        pol_idle = thread_policy(d.p.pid, "fld-tune")
    th.join()
    _, err = rp.communicate()
    check(rp.returncode == 0, f"{tag}: replay: " + err.strip())
    check(len(reps) >= 200, f"{tag}: reports published under the sandbox ({len(reps)})")
    check(pol_idle == 5, f"{tag}: the tuning worker runs under SCHED_IDLE (policy {pol_idle})")
    steps = T.wait_metric(ports["http"], "faultline_tune_steps_total", lambda v: v > 0,
                          timeout=120)
    check(steps is not None and steps > 0, f"{tag}: a tuning job ran under the sandbox")
    before = T.metrics(ports["http"])[0].get('faultline_reloads_total{result="success"}', 0)
    d.signal(signal.SIGHUP)
    after = T.wait_metric(ports["http"], 'faultline_reloads_total{result="success"}',
                          lambda v: v > before, timeout=60)
    check(after is not None and after > before, f"{tag}: SIGHUP reload under the sandbox")
    st, _ = T.http_get(ports["http"], "/healthz")
    check(st == 200, f"{tag}: /healthz after the reload")
    log = d.logtext()
    check("SCHED_IDLE unavailable" not in log and "cannot lower" not in log,
          f"{tag}: no fallback from SCHED_IDLE")
    rc = d.stop()
    check(rc == 0, f"{tag}: clean exit under the sandbox ({rc})")
    if T.failures:
        print(log[-3000:], file=sys.stderr)
    sub.close(0)
    ctx.term()


def scenario_control(unit, name, deny_extra=(), drop_line=None):
    """The daemon under the unit's sandbox less one thing it needs: it must
    not run, or the harness is not applying what the unit says."""
    text, _ = policy(unit, deny_extra=deny_extra)
    if drop_line:
        text = text.replace(drop_line + "\n", "")
    pol = write_policy(name, text)
    cfg, ports = daemon_config(name)
    d = Sandboxed(pol, [FLD, "--config", cfg], os.path.join(TMP, name + ".log"))
    try:
        d.p.wait(30)
    except subprocess.TimeoutExpired:
        pass
    rc = d.p.poll()
    log = d.logtext()
    d.stop()
    check(rc is not None and rc != 0,
          f"control {name}: faultlined does not run under it (exit {rc})")
    print(f"control {name}: exit {rc}: " + (log.strip().splitlines() or [""])[-1])


def scenario_proxy(unit):
    tag = os.path.basename(unit)
    text, _ = policy(unit)
    pol = write_policy("proxy", text)
    front, back, http = T.free_port(), T.free_port(), T.free_port()
    p = Sandboxed(pol, [FL, "proxy", "--frontend", f"tcp://127.0.0.1:{front}", "--backend",
                        f"tcp://127.0.0.1:{back}", "--metrics", f"127.0.0.1:{http}"],
                  os.path.join(TMP, "proxy.log"))
    try:
        p.wait_http(http)
    except RuntimeError as e:
        check(False, f"{tag}: faultline proxy starts under the sandbox: {e}")
        p.stop()
        return
    ctx = zmq.Context()
    sub = T.subscriber(ctx, f"tcp://127.0.0.1:{back}", prefix=b"frame/")
    pub = ctx.socket(zmq.PUB)
    pub.connect(f"tcp://127.0.0.1:{front}")
    got, t_end = None, time.time() + 20
    sub.setsockopt(zmq.RCVTIMEO, 200)
    while got is None and time.time() < t_end:
        pub.send_multipart([b"frame/x", b"payload"])
        try:
            got = sub.recv_multipart()
        except zmq.Again:
            pass
    check(got == [b"frame/x", b"payload"], f"{tag}: the proxy forwards under the sandbox")
    st, body = T.http_get(http, "/metrics")
    check(st == 200 and "faultline_proxy" in body, f"{tag}: the proxy's /metrics answers")
    st, _ = T.http_get(http, "/healthz")
    check(st == 200, f"{tag}: the proxy's /healthz answers")
    rc = p.stop()
    check(rc == 0, f"{tag}: the proxy exits 0 under the sandbox ({rc})")
    pub.close(0)
    sub.close(0)
    ctx.term()


daemon_units = [u for u in UNITS if os.path.basename(u).startswith("faultlined")]
proxy_units = [u for u in UNITS if os.path.basename(u).startswith("faultline-proxy")]
check(daemon_units and proxy_units, "a daemon unit and a proxy unit given")
# Units of the daemon that build the same filter are run once.
seen = {}
for u in daemon_units:
    seen.setdefault(policy(u)[0], u)
for text, u in seen.items():
    scenario_daemon(u)
# sched_setscheduler filtered, as a unit that denies @resources does:
# libzmq's threads abort at start.
scenario_control(daemon_units[0], "no-sched", deny_extra=("sched_setscheduler",))
# AF_NETLINK refused: libzmq aborts listing the interfaces for its bind.
scenario_control(daemon_units[0], "no-netlink", drop_line="family %d" % FAMILIES["AF_NETLINK"])
for u in proxy_units:
    scenario_proxy(u)
T.finish("sandbox")
