#!/usr/bin/python3
"""deploy/grafana/faultline.json against promtool and a real faultlined.

- Every panel (rows aside) has a title and at least one query; every query,
  with the dashboard's variables put in ($instance as a regex, the rate
  interval as 5m), parses: each becomes a recording rule of a generated rules
  file that `promtool check rules` must accept.
- Every metric a query names is one a real faultlined exports: the daemon
  (the daemon tests' quick model, [tune] enabled so the tuning series exist)
  is scraped over HTTP and its # TYPE lines give the names (a histogram's
  with _bucket, _sum and _count).
- The instance variable's query names an exported metric too.

argv: PROMTOOL FAULTLINED MODEL CONFIG
An empty or non-executable PROMTOOL (not installed) makes the test report
SKIP (exit status 77).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "daemon"))
import fldtest as T  # noqa: E402
from fldtest import check  # noqa: E402

PROMTOOL, FLD, MODEL, CONFIG = sys.argv[1:5]
if not PROMTOOL or not shutil.which(PROMTOOL):
    print("SKIP: promtool not found (Debian package prometheus): the dashboard's queries "
          "not checked")
    sys.exit(77)
FLD, MODEL, CONFIG = map(os.path.abspath, (FLD, MODEL, CONFIG))
TMP = tempfile.mkdtemp(prefix="fl-grafana-")

with open(os.path.join(ROOT, "deploy", "grafana", "faultline.json")) as f:
    dash = json.load(f)


def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


def fill(expr):
    """The dashboard's variables as Grafana puts them in."""
    return (expr.replace("$__rate_interval", "5m").replace("${instance}", ".*")
            .replace("$instance", ".*"))


queries = []
for p in panels(dash["panels"]):
    if p["type"] == "row":
        continue
    check(p.get("title"), f"panel {p.get('id')} has a title")
    ts = [t["expr"] for t in p.get("targets", []) if t.get("expr")]
    check(ts, f"panel {p.get('title')!r} has a query")
    queries += [(p["title"], fill(e)) for e in ts]
check(len(queries) >= 15, f"the dashboard has {len(queries)} queries")
var = [v for v in dash["templating"]["list"] if v["name"] == "instance"]
check(len(var) == 1, "the dashboard has an instance variable")

# promtool parses each query as a recording rule's expression.
rules = os.path.join(TMP, "panels.yml")
with open(rules, "w") as f:
    f.write("groups:\n  - name: grafana_panels\n    rules:\n")
    for i, (_, q) in enumerate(queries):
        f.write(f"      - record: grafana_panel_{i}\n        expr: {json.dumps(q)}\n")
r = subprocess.run([PROMTOOL, "check", "rules", rules], capture_output=True, text=True,
                   timeout=60)
check(r.returncode == 0 and f"SUCCESS: {len(queries)} rules found" in r.stdout,
      f"promtool check rules on the panels' queries: {r.stdout[-2000:]}{r.stderr[-2000:]}")

# The names a real faultlined exports.
ports = {"in": T.free_port(), "out": T.free_port(), "http": T.free_port()}
ini = os.path.join(TMP, "faultlined.ini")
T.write_config(ini, CONFIG, {
    "model": {"file": MODEL},
    "input": {"endpoint": f"tcp://127.0.0.1:{ports['in']}"},
    "output": {"endpoint": f"tcp://127.0.0.1:{ports['out']}"},
    "metrics": {"listen": f"127.0.0.1:{ports['http']}"},
    "tune": {"enabled": 1, "idle": 0, "checkpoint": os.path.join(TMP, "tuned.model")},
})
d = T.Daemon(FLD, ini)
try:
    d.wait_http(ports["http"])
    _, text = T.metrics(ports["http"])
finally:
    check(d.stop() == 0, "faultlined stops cleanly")
exported = set()
for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
    exported.add(name)
    if kind == "histogram":
        exported |= {name + "_bucket", name + "_sum", name + "_count"}
check("faultline_stream_anomaly" in exported and "faultline_tune_updates_total" in exported,
      "the scrape lists the per-stream and tuning metrics")

# A name in a query: an identifier followed by { or ( or a space, not a
# function, an aggregation's keyword or a label.
WORDS = {"sum", "max", "min", "avg", "by", "without", "rate", "increase", "histogram_quantile",
         "irate", "count", "label_values", "on", "and", "or", "unless"}
used = set()
vdef = re.match(r"label_values\((\w+)", var[0]["definition"]) if var else None
check(vdef, "the instance variable is label_values(METRIC..., instance)")
for title, q in queries + [("instance variable", vdef.group(1) if vdef else "")]:
    stripped = re.sub(r"\{[^}]*\}", "{}", q)  # label matchers and their values
    stripped = re.sub(r"by \([^)]*\)", "", stripped)
    names = {n for n in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", stripped)
             if n not in WORDS and not re.fullmatch(r"[0-9.e]+", n) and n != "le"}
    names = {n for n in names if not re.fullmatch(r"\d+m", n)}
    for n in names:
        used.add(n)
        check(n in exported, f"{title!r} names {n}, which faultlined does not export")
print("metrics used:", " ".join(sorted(used)))
shutil.rmtree(TMP, ignore_errors=True)
T.finish("grafana_dashboard")
