"""`meson install --destdir` into a temporary directory: binaries, library,
headers, pkg-config file, proto, example configuration, systemd units and
manual pages are where they belong; the units name the installed binary and
configuration; a second install keeps an edited /etc/faultline/faultline.ini.

argv: meson build_dir sysconf_fl unitdir sbindir
"""
import json
import os
import subprocess
import sys
import tempfile

meson, build, sysconf_fl, unitdir, sbindir = sys.argv[1:6]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def install(dest):
    r = subprocess.run([meson, "install", "-C", build, "--no-rebuild", "--destdir", dest],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, f"meson install exit {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def under(dest, path):
    return os.path.join(dest, path.lstrip("/"))


with tempfile.TemporaryDirectory() as dest:
    out = install(dest)
    installed = json.loads(subprocess.run([meson, "introspect", build, "--installed"],
                                          capture_output=True, text=True, check=True).stdout)
    for src, dst in installed.items():
        check(os.path.exists(under(dest, dst)), f"{dst} (from {src}) not installed")
    names = {os.path.relpath(d, "/") for d in installed.values()}
    def has(suffix):
        hit = [n for n in names if n.endswith(suffix)]
        check(bool(hit), f"nothing installed ending in {suffix}")
        return hit
    has("bin/faultline")
    has("sbin/faultlined")
    has("libfaultline.so")
    has("libfaultline.a")
    has("pkgconfig/faultline.pc")
    headers = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs
               if os.path.join(d, f).endswith("include/faultline/detect.h")]
    check(bool(headers), "include/faultline/detect.h not installed")
    has("share/faultline/faultline.proto")
    has("share/faultline/faultline.ini")
    has("share/faultline/grafana/faultline.json")
    has("man1/faultline.1")
    has("man5/faultline.ini.5")
    has("man8/faultlined.8")
    for unit in ("faultlined.service", "faultlined@.service"):
        p = under(dest, os.path.join(unitdir, unit))
        check(os.path.exists(p), f"unit {p} missing")
        if os.path.exists(p):
            text = open(p).read()
            check(f"ExecStart={sbindir}/faultlined --config {sysconf_fl}/" in text,
                  f"{unit}: ExecStart does not name {sbindir}/faultlined and {sysconf_fl}")
    p = under(dest, os.path.join(unitdir, "faultline-proxy@.service"))
    check(os.path.exists(p), f"unit {p} missing")
    if os.path.exists(p):
        text = open(p).read()
        bindir = os.path.join(os.path.dirname(sbindir), "bin")
        check(f"ExecStart={bindir}/faultline proxy $FAULTLINE_PROXY_OPTS" in text and
              f"EnvironmentFile={sysconf_fl}/proxy-%i.conf" in text,
              f"faultline-proxy@.service: ExecStart or EnvironmentFile not under {bindir}, "
              f"{sysconf_fl}")
    conf = under(dest, os.path.join(sysconf_fl, "faultline.ini"))
    check(os.path.isfile(conf), f"example configuration {conf} not installed")
    if os.path.isfile(conf):
        ref = open(os.path.join(os.path.dirname(__file__), "..", "..", "config",
                                "faultline.ini")).read()
        check(open(conf).read() == ref, "installed configuration differs from config/faultline.ini")
        with open(conf, "a") as f:
            f.write("\n; edited by the operator\n")
        edited = open(conf).read()
        out2 = install(dest)
        check(open(conf).read() == edited, "a second install overwrote the edited configuration")

if failures:
    print(f"install: {len(failures)} checks failed", file=sys.stderr)
    sys.exit(1)
print("install: all checks passed")
