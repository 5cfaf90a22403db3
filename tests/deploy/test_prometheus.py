"""deploy/prometheus against real Prometheus.

check:  promtool check config, check rules, test rules (rules_test.yml).
scrape: a real faultlined (the daemon tests' quick model) and a real
        Prometheus server on loopback, with deploy/prometheus/prometheus.yml
        (target and intervals changed: 1 s scrapes) and rules.yml, storage in
        a temporary directory; passes when the query API answers
        up{job="faultlined"} = 1, a faultline_ metric is stored and the rule
        group is loaded; with FAULTLINE, a real `faultline proxy` in the
        faultline-proxy job too, scraped until faultline_proxy_up = 1.
        Bounded: 90 s at most.

argv: check PROMTOOL | scrape PROMETHEUS FAULTLINED MODEL CONFIG [FAULTLINE]
An empty or non-executable PROMTOOL or PROMETHEUS (not installed) makes the
test report SKIP (exit status 77) with the reason, as does a missing PyYAML
for scrape.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROM = os.path.join(ROOT, "deploy", "prometheus")
sys.path.insert(0, os.path.join(ROOT, "tests", "daemon"))
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr, flush=True)
    return cond


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def finish(name):
    if failures:
        print(f"{name}: {len(failures)} checks failed", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: all checks passed")
    sys.exit(0)


def run_check(promtool):
    if not promtool or not shutil.which(promtool):
        skip("promtool not found (Debian package prometheus): config and rules not checked")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "rules.yml"],
                 ["test", "rules", "rules_test.yml"]):
        r = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True,
                           timeout=60)
        check(r.returncode == 0, f"promtool {' '.join(args)}: exit {r.returncode}\n"
              + r.stdout[-3000:] + r.stderr[-3000:])
    finish("prometheus_check")


def query(port, q):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.loads(r.read().decode())["data"]["result"]


def run_scrape(prometheus, fld, model, config, fl=None):
    if not prometheus or not shutil.which(prometheus):
        skip("prometheus not found (Debian package prometheus): no scrape of faultlined")
    try:
        import yaml
    except ImportError:
        skip("PyYAML not found (Debian package python3-yaml): prometheus.yml cannot be edited")
    import fldtest as T

    tmp = tempfile.mkdtemp(prefix="fl-prom-")
    http, pport = T.free_port(), T.free_port()
    ini = os.path.join(tmp, "faultlined.ini")
    T.write_config(ini, os.path.abspath(config), {
        "model": {"file": os.path.abspath(model)},
        "input": {"endpoint": f"tcp://127.0.0.1:{T.free_port()}"},
        "output": {"endpoint": f"tcp://127.0.0.1:{T.free_port()}"},
        "metrics": {"listen": f"127.0.0.1:{http}"},
    })
    with open(os.path.join(PROM, "prometheus.yml")) as f:
        cfg = yaml.safe_load(f)
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [os.path.join(PROM, r) for r in cfg["rule_files"]]
    job = [j for j in cfg["scrape_configs"] if j["job_name"] == "faultlined"]
    check(len(job) == 1, "prometheus.yml has no faultlined job")
    job[0].update(scrape_interval="1s", scrape_timeout="1s")
    job[0]["static_configs"][0]["targets"] = [f"127.0.0.1:{http}"]
    # With the faultline command: a real `faultline proxy` in the
    # faultline-proxy job too (scale-out).
    proxy_http = T.free_port()
    pjob = [j for j in cfg["scrape_configs"] if j["job_name"] == "faultline-proxy"]
    check(len(pjob) == 1, "prometheus.yml has no faultline-proxy job")
    pjob[0].update(scrape_interval="1s", scrape_timeout="1s")
    pjob[0]["static_configs"][0]["targets"] = [f"127.0.0.1:{proxy_http}"]
    pcfg = os.path.join(tmp, "prometheus.yml")
    with open(pcfg, "w") as f:
        yaml.safe_dump(cfg, f)

    d = T.Daemon(fld, ini)
    plog = open(os.path.join(tmp, "prometheus.log"), "w")
    p = px = None
    try:
        d.wait_http(http)
        if fl:
            px = T.spawn([fl, "proxy", "--frontend", f"tcp://127.0.0.1:{T.free_port()}",
                          "--backend", f"tcp://127.0.0.1:{T.free_port()}",
                          "--metrics", f"127.0.0.1:{proxy_http}"],
                         stdout=plog, stderr=plog)
        p = T.spawn([prometheus, "--config.file=" + pcfg,
                     "--storage.tsdb.path=" + os.path.join(tmp, "data"),
                     f"--web.listen-address=127.0.0.1:{pport}"],
                    stdout=plog, stderr=plog)
        t0, up, metric, rules = time.time(), None, None, None
        pup = None if fl else "1"
        while time.time() - t0 < 90:
            if p.poll() is not None:
                break
            try:
                if up != "1":
                    r = query(pport, 'up{job="faultlined"}')
                    up = r[0]["value"][1] if r else None
                if up == "1" and not metric:
                    r = query(pport, 'faultline_build_info{job="faultlined"}')
                    metric = r[0]["metric"] if r else None
                if metric and not rules:
                    with urllib.request.urlopen(f"http://127.0.0.1:{pport}/api/v1/rules",
                                                timeout=3) as resp:
                        groups = json.loads(resp.read().decode())["data"]["groups"]
                    rules = [g for g in groups if g["name"] == "faultline" and g["rules"]]
                if pup != "1":
                    r = query(pport, 'faultline_proxy_up{job="faultline-proxy"}')
                    pup = r[0]["value"][1] if r else None
                if up == "1" and metric and rules and pup == "1":
                    break
            except OSError:
                pass
            time.sleep(0.5)
        check(p.poll() is None, f"prometheus exited {p.returncode}")
        check(up == "1", f'up{{job="faultlined"}} is {up}, not 1')
        check(bool(metric), "no faultline_build_info in Prometheus")
        check(bool(rules), "the faultline rule group is not loaded")
        check(pup == "1", f'faultline_proxy_up{{job="faultline-proxy"}} is {pup}, not 1')
        if metric:
            print("scraped:", metric, f"in {time.time() - t0:.1f} s")
    finally:
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        check(d.stop() == 0, "faultlined did not stop cleanly")
        if px:
            px.terminate()
            check(px.wait(20) == 0, "faultline proxy did not stop cleanly")
        plog.close()
        if failures:
            print(open(plog.name).read()[-3000:], file=sys.stderr)
            print(d.logtext()[-2000:], file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    finish("prometheus_scrape")


if sys.argv[1] == "check":
    run_check(sys.argv[2])
else:
    run_scrape(*sys.argv[2:7])
