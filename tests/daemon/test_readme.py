#!/usr/bin/python3
"""The README's Python subscriber, run as written against a real faultlined.

Extracts the ```python block under "Reading the reports from Python", writes
it to a file beside the protoc-generated classes, starts the daemon with the
test model, replays the episode with `faultline replay`, and checks that the
script prints one line per report in the documented form.

usage: test_readme.py FAULTLINED FAULTLINE MODEL EPISODE CONFIG
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import fldtest as T  # noqa: E402

FLD, FL, MODEL, EPISODE, CONFIG = map(os.path.abspath, sys.argv[1:6])
TMP = tempfile.mkdtemp(prefix="fld-readme-")
T.load_proto(TMP)

with open(os.path.join(T.ROOT, "README.md")) as f:
    readme = f.read()
section = readme.split("## Reading the reports from Python", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```python\n(.*?)```", section, re.S)
T.check(len(blocks) == 1, "README has one python block in its subscriber section")
script = os.path.join(TMP, "subscribe.py")
with open(script, "w") as f:
    f.write(blocks[0])
T.check(len(blocks[0].strip().splitlines()) <= 25, "the subscriber is about twenty lines")

n, stride, window = 300, 15, 60
csv = os.path.join(TMP, "episode.csv")
with open(EPISODE) as f, open(csv, "w") as g:
    for i, line in enumerate(f):
        if i > n:
            break
        g.write(line)
ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
cfg = os.path.join(TMP, "readme.ini")
T.write_config(cfg, CONFIG, {
    "model": {"file": MODEL},
    "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}", "bind": 1},
    "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}", "stride": stride},
    "metrics": {"listen": f"127.0.0.1:{ports['http']}"},
})
d = T.Daemon(FLD, cfg)
d.wait_http(ports["http"])
k = (n - window) // stride + 1
sub = T.spawn([sys.executable, script, f"tcp://127.0.0.1:{ports['out']}", str(k)],
              cwd=TMP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
T.check(T.wait_metric(ports["http"], "faultline_report_subscriptions", lambda v: v >= 1) >= 1,
        "the README subscriber subscribed")
rp = subprocess.run([FL, "replay", "--in", csv, "--connect", f"tcp://127.0.0.1:{ports['in']}",
                     "--config", CONFIG, "--stream", "pump-readme"], capture_output=True,
                    text=True)
T.check(rp.returncode == 0, "replay succeeded: " + rp.stderr.strip())
try:
    out, err = sub.communicate(timeout=60)
except subprocess.TimeoutExpired:
    sub.kill()
    out, err = sub.communicate()
T.check(sub.returncode == 0, f"the subscriber exited 0 after {k} reports: {err.strip()}")
lines = out.splitlines()
T.check(len(lines) == k, f"one line per report: {len(lines)} of {k}")
form = re.compile(r"^pump-readme tick \d+: score -?[\d.]+ of [\d.]+, (ok|ANOMALY in \w+)$")
T.check(all(form.match(l) for l in lines), "every line has the documented form")
T.check(d.stop() == 0, "the daemon stopped cleanly")
T.finish("readme_subscriber")
