"""The systemd units: the hardening directives (sandbox, watchdog, restart) are there,
`systemd-analyze verify` accepts both (faultlined.service and an instance of
faultlined@.service), and each with its commented LoadCredential= example
uncommented, without a warning, and `systemd-analyze security
--offline=yes` rates each at an exposure of 2.0 or lower.  The units are
verified as copies whose binary paths point at the built faultlined (verify
checks that ExecStart exists); no running systemd is needed.

faultline-proxy@.service runs `faultline proxy`: it is checked the same way
(it has no state directory), against the built faultline.

argv: faultlined_exe [--faultline faultline_exe] unit_file...
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

exe = os.path.abspath(sys.argv[1])
units = sys.argv[2:]
fl_exe = None
if units[:1] == ["--faultline"]:
    fl_exe = os.path.abspath(units[1])
    units = units[2:]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


REQUIRED = [
    "Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
    "ConfigurationDirectory=faultline", "StateDirectory=faultline", "DynamicUser=yes",
    "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
    "MemoryDenyWriteExecute=yes", "Environment=OPENBLAS_NUM_THREADS=1", "CapabilityBoundingSet=\n",
    "ProtectKernelTunables=yes", "ProtectControlGroups=yes", "RestrictNamespaces=yes",
    "SystemCallArchitectures=native", "ProtectProc=invisible", "UMask=0077",
]

sa = shutil.which("systemd-analyze")
with tempfile.TemporaryDirectory() as tmp:
    copies = []
    for u in units:
        text = open(u).read()
        proxy = os.path.basename(u).startswith("faultline-proxy")
        for d in REQUIRED:
            if proxy and d == "StateDirectory=faultline":
                continue
            check(d in text, f"{os.path.basename(u)}: no {d.strip()}")
        text = re.sub(r"(Exec\w+=)\S*/faultlined\b", r"\g<1>" + exe, text)
        if proxy:
            check(fl_exe is not None, f"{os.path.basename(u)}: no --faultline to verify it with")
            text = re.sub(r"(Exec\w+=)\S*/faultline\b", r"\g<1>" + (fl_exe or ""), text)
        name = os.path.basename(u).replace("@.", "@line1.")
        dst = os.path.join(tmp, name)
        with open(dst, "w") as f:
            f.write(text)
        copies.append(dst)
        # The commented CurveZMQ credential example must verify too once
        # uncommented (a root-only secret key under DynamicUser=).
        check(re.search(r"\n#LoadCredential=\w+\.key_secret:", text) is not None,
              f"{os.path.basename(u)}: no commented LoadCredential= example for the CurveZMQ key")
        cred = re.sub(r"(?m)^#(LoadCredential=)", r"\1", text)
        cname = (name.replace("@", "-cred@", 1) if "@" in name
                 else name.replace(".service", "-cred.service"))
        dst = os.path.join(tmp, cname)
        with open(dst, "w") as f:
            f.write(cred)
        copies.append(dst)
    if not sa:
        print("SKIP: systemd-analyze not found (apt-get install systemd): units not verified")
        if failures:
            sys.exit(1)
        sys.exit(77)
    r = subprocess.run([sa, "verify", "--man=no", *copies], capture_output=True, text=True,
                       timeout=60, cwd=tmp)
    msg = (r.stdout + r.stderr).strip()
    check(r.returncode == 0 and not msg, f"systemd-analyze verify: exit {r.returncode}: {msg}")
    for c in copies:
        r = subprocess.run([sa, "security", "--offline=yes", "--no-pager", c],
                           capture_output=True, text=True, timeout=60, cwd=tmp)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        check(m is not None, f"security {c}: no exposure level: {r.stdout[-500:]} {r.stderr}")
        if m:
            print(f"{os.path.basename(c)}: exposure {m.group(1)}")
            check(float(m.group(1)) <= 2.0, f"{os.path.basename(c)}: exposure {m.group(1)} > 2.0")

if failures:
    print(f"units: {len(failures)} checks failed", file=sys.stderr)
    sys.exit(1)
print("units: all checks passed")
