#!/usr/bin/python3
"""Every command in README.md and docs/, run, so that the documentation cannot rot.

Extracts every code block of README.md, then of docs/*.md and
docs/results/*.md (4-space indented blocks and ``` fenced blocks), in order,
and runs each block as one bash script
(`set -eo pipefail`, so a failing command fails its block) in a scratch copy
of the source tree, whose `build` is a symlink to the build directory under
test and whose `../shared` is the real ../shared.  Long commands run in
their quick mode: FAULTLINE_QUICK=1 is in the environment and the scripts
honour it (deploy/demo.sh: 7000 rows, 4 + 3 epochs; bench_nn: 3
repetitions).  After each block the expectations of its section (files
written, output) are checked.  A section is named "FILE: HEADING" (FILE
relative to the source root, HEADING the `## ` heading above the block, or
"(top)" before the first).

The few long benchmarks listed in CHECK_ONLY are not run: their programs are
checked instead (a Python script compiles, a binary is executable, every path
argument exists, a `meson test --benchmark NAME` is among the build's
benchmarks), so a renamed script, binary or benchmark still fails the test.

A new block is picked up by itself.  Nothing is left out silently: a block
that is not commands, a command that is not run, a fixture and a path
rewrite are each in one of the lists below, with the reason, and an entry
whose block or command is gone from the README fails the test (so the lists
cannot rot either).  A fenced block in a language other than sh/bash/shell/
console, or none, fails the test until it is listed.

usage: test_readme_commands.py SOURCE_ROOT BUILD_ROOT [SECTION...]
       (with SECTION...: only the blocks of those sections, "FILE: HEADING",
       for debugging)
"""
import os
import glob
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
from fldtest import free_port  # noqa: E402

# Blocks that are not commands: (section, start of the block's first line) -> why.
NOT_COMMANDS = {
    ("README.md: Layout", "lib/"): "the source tree, not commands",
    ("docs/model.md: The network", "CSV / frames"): "a data-flow diagram",
    ("docs/operations.md: Metrics and health", '{"streams"'): "an answer of /streams",
    ("docs/bridge.md: (top)", "edge nodes"): "a data-flow diagram",
    ("docs/bridge.md: The mapping", "[map.pump1]"):
        "an excerpt of a bridge configuration; the whole example, config/bridge.ini, is "
        "checked by bridge_config (faultline bridge --check)",
    ("docs/results/bridge.md: (top)", "devices 40"): "the benchmark's output",
    ("docs/results/bridge.md: (top)", "devices 64"): "the benchmark's output",
    ("docs/results/bridge.md: A broker restart", "outage 2.0 s"): "bridge_restart's output",
}
# Blocks another test runs: (section, start of first line) -> which test.
RUN_ELSEWHERE = {
    ("README.md: Reading the reports from Python", "#!/usr/bin/python3"):
        "the subscriber script: readme_subscriber (tests/daemon/test_readme.py) runs it as "
        "written against a real faultlined",
}
# Commands not run: regex on the command's line -> why.
EXEMPT = [
    (r"^bash tests/run\.sh\b",
     "the whole test suite, this test among its tests: it cannot run inside itself "
     "(CI runs exactly it: .ci/run)"),
    (r"^systemctl ",
     "needs systemd as PID 1 and root; this container has neither.  The units are "
     "checked by the test systemd_units (systemd-analyze verify, security --offline)"),
    (r"^apt-get install ",
     "installs packages on the host; deploy/deps.sh installs the same ones for the tests"),
    (r"^\$EDITOR ", "the reader's own edit of the copied configuration"),
    (r"^mosquitto_sub -h broker\.plant ",
     "needs the plant's broker and a running bridge; bridge_sparkplug (tests/bridge) "
     "subscribes to the same topics on a real mosquitto"),
    (r"^curl -s 127\.0\.0\.1:9120/metrics",
     "the bridge the unit started, which does not run here; bridge_sparkplug scrapes a "
     "real bridge's metrics"),
]
# Commands not run because they take many minutes by design (repeated timed
# runs): regex on the command's line -> why.  Their programs and arguments are
# checked instead (check_only_script), so that the command cannot rot.
CHECK_ONLY = [
    (r"(?s)^/usr/bin/python3 tests/bench/bench_daemon\.py .*--tune-only",
     "nine interleaved 10-second runs of three daemons; the benchmark `daemon` runs the script"),
    (r"^/usr/bin/python3 tests/bench/bench_pydaemon\.py ",
     "nine alternating runs of faultlined and the Python daemon; bench_torch_quick runs the "
     "Python daemon"),
    (r"^/usr/bin/python3 tests/bench/skab_lofo\.py ",
     "two folds of SKAB runs per candidate (up to 24 runner passes with the drift "
     "margins), tens of minutes; "
     "skab.md's Result section runs the same runner and detector"),
    (r"(?s)^FL_TUNE_SEED=23 FL_TUNE_MODEL=\S+ \\?\s*/usr/bin/python3 tests/daemon/test_tune\.py drift ",
     "two daemons streaming for minutes and two evaluations: the test daemon_tune_drift runs "
     "exactly this scenario"),
    (r"^OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tests/bench/wide\.py ",
     "trains 504- and 8-sensor models on an hour of data, evaluates and serves both: tens of "
     "minutes; the test wide_1000 runs the same path at 1,000 channels"),
    (r"^meson test -C build .*--benchmark (daemon|scale)\b",
     "the daemon and scale-out benchmarks take minutes; the tests daemon_* and scale_* run "
     "the same code"),
]
# Commands that serve until stopped: regex -> why.  Each is started in the
# background, must answer /healthz on its config's [metrics] listen within
# 60 s, and must exit 0 on SIGTERM.
DAEMONS = [
    (r"^\S*faultlined --config (\S+)", "the daemon serves until stopped"),
]
# Paths rewritten in every command: (regex, replacement) -> why.
REWRITES = [
    ((r"(?<![\w.$/-])/etc/faultline/", "$STAGE/etc/faultline/"),
     "the test never writes the host's /etc: `meson install` is staged under $STAGE "
     "(DESTDIR), and the installed configuration and model are read from there"),
    ((r"(?<![\w.$/-])/usr/share/faultline/", "$STAGE/usr/share/faultline/"),
     "the installed example files are read from the staged `meson install`"),
    ((r"\bmeson test -C build (?!.*--logbase)", "meson test -C build --logbase readme-nested "),
     "a `meson test` run here, inside the suite's own `meson test` of the same build, "
     "would overwrite the suite's meson-logs/testlog.json, from which tests/run.sh counts"),
]
# Environment per section -> why.
SECTION_ENV = {
    "README.md: Installing on a gateway": (
        lambda stage: {
            "DESTDIR": stage,
            "PATH": f"{stage}/usr/bin:{stage}/usr/sbin:" + os.environ.get("PATH", ""),
            "LD_LIBRARY_PATH": ":".join(
                os.path.join(stage, "usr", d) for d in ("lib", "lib64", libdir_multiarch())),
        },
        "`meson install` (as root on a gateway) is staged with DESTDIR, and the installed "
        "faultline and faultlined are found there"),
}
SECTION_ENV["README.md: On the plant's MQTT bus"] = (
    SECTION_ENV["README.md: Installing on a gateway"][0],
    "the installed faultline (staged by the section before) checks the installed example "
    "configuration")
SECTION_ENV["docs/bridge.md: Pointing faultline at an existing broker"] = (
    SECTION_ENV["README.md: Installing on a gateway"][0],
    "the installed faultline (staged by README.md's `meson install`) checks the installed "
    "example configuration")
# Shell run before a section's first block -> why.
SETUP = {
    "README.md: First use on your own CSV": (
        "cp config/plant.ini my.ini\n"
        "sed -i -e 's/^;epochs1 = .*/epochs1 = 4/' -e 's/^;epochs2 = .*/epochs2 = 3/' my.ini\n"
        "build/tools/faultline simulate --rows 3000 --seed 3 --out clean.csv\n"
        "build/tools/faultline simulate --rows 600 --seed 4 --anomalies 2 --out today.csv\n",
        "my.ini, clean.csv and today.csv stand for the reader's own: the plant's config "
        "with a quick schedule and the simulator's data"),
    "README.md: Running the daemon": (
        "sed -i -e \"/^\\[input\\]/,/^\\[/ s|^endpoint = .*|endpoint = tcp://127.0.0.1:$PORT_IN|\" "
        "-e \"/^\\[output\\]/,/^\\[/ s|^endpoint = .*|endpoint = tcp://127.0.0.1:$PORT_OUT|\" "
        "-e \"/^\\[metrics\\]/,/^\\[/ s|^listen = .*|listen = 127.0.0.1:$PORT_METRICS|\" "
        "out/faultlined.ini\n",
        "the demo's out/faultlined.ini on free ports: the demo's own (25555, 25556, 29108) "
        "may be held by other tests or daemons on this machine"),
}
# Sections whose blocks need data that may be absent: section -> path.  Without
# it the block is reported as not run (the test still passes), as run.sh's
# SKAB tests do.
REQUIRES = {
    "docs/results/skab.md: Result": "../shared/data/skab",
    "docs/results/skab.md: Training time": "../shared/data/skab/valve1/1.csv",
    "docs/results/correction.md: Cost": "../shared/data/skab/valve1/1.csv",
    "docs/results/skab.md: Without a configuration": "../shared/data/skab",
    "docs/results/skab.md: Anomaly-free recording":
        "../shared/data/skab/anomaly-free/anomaly-free.csv",
    "docs/results/injected-faults.md: SKAB's anomaly-free recording":
        "../shared/data/skab/anomaly-free/anomaly-free.csv",
}
# Sections whose blocks need a program that may be absent: section -> program.
# Without it the block is reported as not run, as meson leaves out the tests
# that need it.
REQUIRES_PROGRAM = {
    "docs/operations.md: Alerts": "promtool",
}
# What each section's blocks must leave behind: files (relative to the
# scratch tree, $STAGE expanded) and regexes the output must match.
EXPECT = {
    "README.md: Try it": {
        "files": ["out/plant.model", "out/eval.json", "out/episode.svg", "out/reports.jsonl"],
        "output": [r"faultlined: [1-9]\d* reports, \d+ flagged",
                   r"== wrote out/plant\.model"]},
    "README.md: First use on your own CSV": {"files": ["my.model", "scored.csv"]},
    "README.md: Installing on a gateway": {
        "files": ["$STAGE/usr/bin/faultline", "$STAGE/usr/sbin/faultlined",
                  "$STAGE/etc/faultline/faultline.ini", "$STAGE/etc/faultline/plant.model",
                  "plant.csv"]},
    "README.md: On the plant's MQTT bus": {"files": ["$STAGE/etc/faultline/bridge-plant.ini"]},
    "docs/bridge.md: Pointing faultline at an existing broker": {
        "files": ["$STAGE/etc/faultline/bridge-plant.ini"]},
    "docs/results/skab.md: Result": {"output": [r"F1"]},
    "docs/results/skab.md: Training time": {"files": ["valve1-1.model"], "output": [r"real"]},
    "docs/results/skab.md: Without a configuration": {"output": [r"F1"]},
    "docs/results/skab.md: Anomaly-free recording": {"output": [r"false alarms \d+ of \d+"]},
    "docs/results/injected-faults.md: SKAB's anomaly-free recording": {
        "files": ["af.model"], "output": [r"overall"]},
    "docs/results/lipschitz-ablation.md: (top)": {"output": [r"global"]},
    "docs/results/performance.md: The numeric core against sgemm": {
        "output": [r"GFLOP/s", r"conv1d"]},
    "docs/operations.md: Alerts": {"output": [r"SUCCESS"]},
}
BLOCK_TIMEOUT = 1500


def libdir_multiarch():
    try:
        return os.path.join("lib", subprocess.run(["gcc", "-print-multiarch"],
                                                  capture_output=True, text=True).stdout.strip())
    except OSError:
        return "lib"


def documents(src):
    """The documents whose commands are run, relative to src, in order."""
    docs = ["README.md"]
    for pattern in ("docs/*.md", "docs/results/*.md"):
        docs += sorted(os.path.relpath(p, src) for p in glob.glob(os.path.join(src, pattern)))
    return docs


def blocks_of(text, doc="README.md"):
    """[(section, kind, lang, lines)] for every code block, in order; section
    is "DOC: HEADING"."""
    out, section = [], f"{doc}: (top)"
    lines = text.split("\n")
    i, prev_blank = 0, True
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", line)
        if m:
            fence, lang, body = m.group(1), m.group(2).lower(), []
            i += 1
            while i < len(lines) and not lines[i].startswith(fence):
                body.append(lines[i])
                i += 1
            out.append((section, "fenced", lang, body))
            i += 1
            prev_blank = False
            continue
        if line.startswith("#"):
            h = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
            if h and line.startswith("## "):
                section = f"{doc}: {h.group(1)}"
            prev_blank = False
            i += 1
            continue
        if prev_blank and line.startswith("    ") and line.strip():
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            out.append((section, "indented", "", body))
            prev_blank = True
            continue
        prev_blank = not line.strip()
        i += 1
    return out


def wait_healthz(config, pid):
    """The mode --wait-healthz CONFIG PID: waits for /healthz on the
    config's [metrics] listen while PID lives."""
    listen = None
    with open(config) as f:
        sect = None
        for line in f:
            line = line.split(";", 1)[0].strip()
            if line.startswith("["):
                sect = line.strip("[]")
            elif sect == "metrics" and line.startswith("listen"):
                listen = line.split("=", 1)[1].strip()
    if not listen:
        print(f"readme: {config} has no [metrics] listen to probe", file=sys.stderr)
        return 1
    t_end = time.time() + 60
    while time.time() < t_end:
        try:
            os.kill(pid, 0)
        except OSError:
            print("readme: the daemon exited before it served /healthz", file=sys.stderr)
            return 1
        try:
            with urllib.request.urlopen(f"http://{listen}/healthz", timeout=2) as r:
                if r.status == 200:
                    print(f"readme: /healthz on {listen} answered 200")
                    return 0
        except OSError:
            pass
        time.sleep(0.2)
    print(f"readme: no /healthz on {listen} within 60 s", file=sys.stderr)
    return 1


def script_for(body, used):
    """The block as a bash script: exempt commands replaced by a note, daemons
    started in the background and probed, paths rewritten."""
    out = ["set -eo pipefail",
           "trap 'echo \"readme: FAILED (exit $?): $BASH_COMMAND\" >&2' ERR"]
    cmd_lines = []
    logical = ""
    for line in body:
        # Join backslash continuations into one logical command.
        if logical:
            logical += "\n" + line
        else:
            logical = line
        if line.rstrip().endswith("\\"):
            continue
        cmd_lines.append(logical)
        logical = ""
    if logical:
        cmd_lines.append(logical)
    for cmd in cmd_lines:
        for k, ((pat, rep), _why) in enumerate(REWRITES):
            if re.search(pat, cmd):
                used.add(("rewrite", k))
                cmd = re.sub(pat, rep, cmd)
        stripped = cmd.strip()
        ex = [(k, why) for k, (pat, why) in enumerate(EXEMPT) if re.search(pat, stripped)]
        if ex:
            used.add(("exempt", ex[0][0]))
            out.append("echo " + sh_quote(f"readme: NOT RUN: {stripped}  ({ex[0][1]})"))
            continue
        co = [(k, why) for k, (pat, why) in enumerate(CHECK_ONLY) if re.search(pat, stripped)]
        if co:
            used.add(("check", co[0][0]))
            out.append("echo " + sh_quote(f"readme: CHECKED, NOT RUN: {stripped}  ({co[0][1]})"))
            out.append(check_only_script(stripped))
            continue
        dm = [(k, re.search(pat, stripped)) for k, (pat, _w) in enumerate(DAEMONS)]
        dm = [(k, m) for k, m in dm if m]
        if dm:
            k, m = dm[0]
            used.add(("daemon", k))
            cfg = m.group(1)
            out.append(f"echo {sh_quote('readme: $ ' + stripped)}")
            out.append(f"{cmd} &")
            out.append("readme_pid=$!")
            out.append(f"{sh_quote(sys.executable)} {sh_quote(os.path.abspath(__file__))} "
                       f"--wait-healthz {cfg} $readme_pid || "
                       "{ kill -KILL $readme_pid 2>/dev/null; exit 1; }")
            out.append("kill -TERM $readme_pid")
            out.append("wait $readme_pid || { echo \"readme: the daemon exited $? on SIGTERM\" "
                       ">&2; exit 1; }")
            continue
        if stripped and not stripped.startswith("#"):
            out.append(f"echo {sh_quote('readme: $ ' + stripped)}")
        out.append(cmd)
    return "\n".join(out) + "\n"


def check_only_script(cmd):
    """Shell that checks a command's programs and arguments without running
    it: a `meson test --benchmark NAME` is among the build's benchmarks; a
    Python script compiles; a program is executable; every argument that is
    a relative path exists."""
    words = shlex.split(cmd.replace("\\\n", " "))
    while words and re.match(r"^\w+=", words[0]):  # leading environment assignments
        words.pop(0)
    out = []
    if words[:2] == ["meson", "test"]:
        build = words[words.index("-C") + 1]
        names = [w for w in words[words.index("--benchmark") + 1:] if not w.startswith("-")]
        # The whole list first: grep -q leaving early would break meson's pipe.
        out.append(f"readme_benchmarks=$(meson test -C {sh_quote(build)} --benchmark --list)")
        for n in names:
            pat = sh_quote("(^|:)" + re.escape(n) + "$")
            out.append(f"grep -Eq {pat} <<< \"$readme_benchmarks\" || "
                       f"{{ echo {sh_quote('readme: no benchmark ' + n)} >&2; exit 1; }}")
        return "\n".join(out)
    prog, args = (words[1], words[2:]) if words[0].endswith("python3") else (words[0], words[1:])
    if words[0].endswith("python3"):
        out.append(f"{sh_quote(sys.executable)} -m py_compile {sh_quote(prog)}")
    else:
        out.append(f"test -x {sh_quote(prog)} || {{ echo {sh_quote('readme: no program ' + prog)} "
                   ">&2; exit 1; }")
    for a in args:
        if "/" in a and not a.startswith(("-", "/")) and "://" not in a:
            out.append(f"test -e {sh_quote(a)} || {{ echo {sh_quote('readme: no file ' + a)} "
                       ">&2; exit 1; }")
    return "\n".join(out)


def sh_quote(s):
    return "'" + s.replace("'", "'\"'\"'") + "'"


def key_match(table, section, body):
    first = next((l.strip() for l in body if l.strip()), "")
    for (sec, start), why in table.items():
        if sec == section and first.startswith(start):
            return (sec, start), why
    return None, None


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--wait-healthz":
        return wait_healthz(sys.argv[2], int(sys.argv[3]))
    src, build = map(os.path.abspath, sys.argv[1:3])
    only = set(sys.argv[3:])
    blocks = []
    for doc in documents(src):
        with open(os.path.join(src, doc)) as f:
            blocks += blocks_of(f.read(), doc)
    failures, notes = [], []

    def fail(msg):
        failures.append(msg)
        print("FAIL: " + msg, flush=True)

    tmp = tempfile.mkdtemp(prefix="fl-readme-")
    work = os.path.join(tmp, "main")
    stage = os.path.join(tmp, "stage")
    os.makedirs(stage)
    shutil.copytree(src, work, symlinks=True, ignore=lambda d, names: [
        n for n in names if n in (".git", "__pycache__", "out") or
        (os.path.abspath(d) == src and n.startswith("build"))])
    os.symlink(build, os.path.join(work, "build"))
    shared = os.path.join(os.path.dirname(src), "shared")
    if os.path.isdir(shared):
        os.symlink(os.path.realpath(shared), os.path.join(tmp, "shared"))
    env = dict(os.environ, FAULTLINE_QUICK="1", STAGE=stage,
               DEMO_PORTS=f"{free_port()} {free_port()} {free_port()}",
               PORT_IN=str(free_port()), PORT_OUT=str(free_port()),
               PORT_METRICS=str(free_port()))
    print(f"readme: {len(blocks)} blocks; scratch tree {work}, build {build}", flush=True)

    used = set()
    sections = [s for s, _k, _l, _b in blocks]
    outputs = {}
    setup_done = set()
    t_all = time.time()
    for n, (section, kind, lang, body) in enumerate(blocks, 1):
        first = next((l.strip() for l in body if l.strip()), "")
        label = f"block {n} ({section}: {first[:60]})"
        key, why = key_match(NOT_COMMANDS, section, body)
        if key:
            used.add(("not", key))
            print(f"readme: {label}: not commands ({why})")
            continue
        key, why = key_match(RUN_ELSEWHERE, section, body)
        if key:
            used.add(("elsewhere", key))
            print(f"readme: {label}: run elsewhere: {why}")
            continue
        if kind == "fenced" and lang not in ("", "sh", "bash", "shell", "console"):
            fail(f"{label}: a ```{lang} block that no list in {os.path.basename(__file__)} "
                 "classifies (NOT_COMMANDS or RUN_ELSEWHERE)")
            continue
        if lang == "console":
            body = [l[2:] if l.startswith("$ ") else "# " + l for l in body]
        if only and section not in only:
            continue
        if section in REQUIRES:
            need = os.path.normpath(os.path.join(work, REQUIRES[section]))
            if not os.path.exists(need):
                print(f"readme: {label}: NOT RUN, {REQUIRES[section]} is absent")
                notes.append(f"{label}: not run ({REQUIRES[section]} absent)")
                continue
        if section in REQUIRES_PROGRAM and not shutil.which(REQUIRES_PROGRAM[section]):
            print(f"readme: {label}: NOT RUN, {REQUIRES_PROGRAM[section]} is not installed")
            notes.append(f"{label}: not run ({REQUIRES_PROGRAM[section]} not installed)")
            continue
        benv = dict(env)
        if section in SECTION_ENV:
            benv.update(SECTION_ENV[section][0](stage))
        if section in SETUP and section not in setup_done:
            setup_done.add(section)
            print(f"readme: setup for {section}: {SETUP[section][1]}", flush=True)
            r = subprocess.run(["bash", "-c", "set -eo pipefail\n" + SETUP[section][0]],
                               cwd=work, env=benv, capture_output=True, text=True)
            if r.returncode:
                fail(f"setup of {section} exited {r.returncode}:\n{r.stdout}{r.stderr}")
                continue
        script = script_for(body, used)
        print(f"readme: {label}: running", flush=True)
        t0 = time.time()
        try:
            r = subprocess.run(["bash", "-c", script], cwd=work, env=benv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=BLOCK_TIMEOUT, start_new_session=True)
            rc, out = r.returncode, r.stdout
        except subprocess.TimeoutExpired as e:
            rc, out = "timeout", (e.stdout or b"").decode(errors="replace") \
                if isinstance(e.stdout, bytes) else (e.stdout or "")
        dt = time.time() - t0
        outputs[section] = outputs.get(section, "") + out
        tail = "\n".join(out.splitlines()[-40:])
        print("    " + tail.replace("\n", "\n    "), flush=True)
        if rc != 0:
            fail(f"{label} exited {rc} after {dt:.0f} s (a documented command broke; a block "
                 "that is not commands goes in NOT_COMMANDS, a command that cannot run here "
                 "in EXEMPT, with the reason)")
        else:
            print(f"readme: {label}: ok in {dt:.0f} s", flush=True)

    # The expectations of each section that ran.
    for section, exp in EXPECT.items():
        if section not in sections:
            fail(f"EXPECT names section '{section}', which the documents no longer have")
            continue
        if section not in outputs:
            continue
        for path in exp.get("files", []):
            p = os.path.join(work, path.replace("$STAGE", stage))
            if not (os.path.isfile(p) and os.path.getsize(p) > 0):
                fail(f"{section}: expected file {path} is missing or empty")
        for rx in exp.get("output", []):
            if not re.search(rx, outputs[section]):
                fail(f"{section}: the output does not match /{rx}/")
    # Every list entry must still match something in the documents.
    for key in NOT_COMMANDS:
        if ("not", key) not in used:
            fail(f"NOT_COMMANDS entry {key} matches no block")
    for key in RUN_ELSEWHERE:
        if ("elsewhere", key) not in used:
            fail(f"RUN_ELSEWHERE entry {key} matches no block")
    for section in list(SETUP) + list(SECTION_ENV) + list(REQUIRES) + list(REQUIRES_PROGRAM):
        if section not in sections:
            fail(f"an entry names section '{section}', which the documents no longer have")
    if not only:
        for k, (pat, _w) in enumerate(EXEMPT):
            if ("exempt", k) not in used:
                fail(f"EXEMPT /{pat}/ matches no command")
        for k, (pat, _w) in enumerate(CHECK_ONLY):
            if ("check", k) not in used:
                fail(f"CHECK_ONLY /{pat}/ matches no command")
        for k, (pat, _w) in enumerate(DAEMONS):
            if ("daemon", k) not in used:
                fail(f"DAEMONS /{pat}/ matches no command")
        for k, ((pat, _r), _w) in enumerate(REWRITES):
            if ("rewrite", k) not in used:
                fail(f"REWRITES /{pat}/ matches no command")
    print(f"readme: {time.time() - t_all:.0f} s in all")
    for note in notes:
        print("note: " + note)
    if failures:
        print(f"{len(failures)} failures; scratch tree kept in {tmp}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("readme_commands: every documented command ran or was checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
