"""The manual pages stay in sync with the programs and the example config:

faultline(1): the commands of `faultline --help` are the page's COMMANDS
  sections; for each, every --option of `faultline CMD --help` is in its
  section, every option of the section is in --help or in the command's
  getopt table (tools/*.c), and every getopt option is in the section.
faultlined(8): the options of `faultlined --help` are the page's OPTIONS;
  the metric names daemon/*.c prints are the page's METRICS (faultline
  proxy's, in tools/proxy.c, are in faultline(1)).
faultline.ini(5): every key of config/faultline.ini is in its section of the
  page with the same default, and every key of the page is in the example or
  among the keys lib/config.c and daemon/dconfig.c parse.

argv: faultline_exe faultlined_exe
"""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAN = os.path.join(ROOT, "man")
fl, fld = sys.argv[1:3]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def helptext(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def opts(text):
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def sections(text, level):
    """{title: body} of the scdoc headings of this level ('#' or '##')."""
    out = {}
    parts = re.split(r"^" + level + r" (.+)$", text, flags=re.M)
    for i in range(1, len(parts), 2):
        out[parts[i].strip()] = parts[i + 1]
    return out


def getopt_tables():
    """{command: set of --options} from the `static const struct option opts[]`
    tables, matched to commands by the usage line in the same function."""
    out = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "tools"))):
        if not name.endswith(".c"):
            continue
        src = open(os.path.join(ROOT, "tools", name)).read()
        for m in re.finditer(r"static const struct option opts\[\] = \{(.*?)\};", src, re.S):
            names = {"--" + o for o in re.findall(r'\{"([a-z0-9-]+)"', m.group(1))}
            before = src[:m.start()]
            cmd = re.findall(r"usage: faultline (\w+)", before + src[m.end():m.end() + 3000])
            near = re.findall(r"usage: faultline (\w+)", src[m.start():m.start() + 4000])
            c = near[0] if near else (cmd[-1] if cmd else None)
            if c:
                out.setdefault(c, set()).update(names)
    return out


# ---- faultline(1)
page = open(os.path.join(MAN, "faultline.1.scd")).read()
top = helptext(fl, "--help")
cmds = re.findall(r"^  (\w+)  ", top, flags=re.M)
check(len(cmds) >= 5, f"faultline --help lists no commands: {top[:300]}")
man_cmds = sections(sections(page, "#").get("COMMANDS", ""), "##")
check(set(cmds) == set(man_cmds),
      f"faultline(1) commands {sorted(man_cmds)} != faultline --help's {sorted(cmds)}")
tables = getopt_tables()
glob = sections(page, "#").get("GLOBAL OPTIONS", "")
check({"--help", "--version"} <= opts(glob), "faultline(1): GLOBAL OPTIONS lacks --help/--version")
for c in cmds:
    body = man_cmds.get(c, "")
    h = opts(helptext(fl, c, "--help")) - {"--help"}
    m = opts(body) - {"--help"}
    t = tables.get(c, set()) - {"--help"}
    for o in sorted(h - m):
        check(False, f"faultline(1) {c}: {o} is in `faultline {c} --help` but not in the page")
    for o in sorted(m - h - t):
        check(False, f"faultline(1) {c}: {o} is in the page but not in --help or the source")
    for o in sorted(t - m):
        check(False, f"faultline(1) {c}: {o} is accepted (getopt table) but not in the page")
    check(bool(t), f"no getopt table found for faultline {c}")

# ---- faultlined(8)
page = open(os.path.join(MAN, "faultlined.8.scd")).read()
h = opts(helptext(fld, "--help"))
m = opts(sections(page, "#").get("OPTIONS", ""))
check(h == m, f"faultlined(8) OPTIONS {sorted(m)} != faultlined --help's {sorted(h)}")


def metric_names(files):
    """Metric names the sources print (a histogram's _bucket/_sum/_count
    series belong to its name)."""
    names = set()
    for path in files:
        names |= set(re.findall(r"\b(faultline_[a-z0-9_]+)", open(path).read()))
    names = {n for n in names if "__" not in n}  # protobuf-c's faultline__frame__... functions
    return {n for n in names
            if not (re.search(r"_(bucket|sum|count)$", n) and re.sub(r"_(bucket|sum|count)$", "", n) in names)}


daemon_src = [os.path.join(ROOT, "daemon", n) for n in sorted(os.listdir(os.path.join(ROOT, "daemon")))
              if n.endswith(".c")]
shown = set(re.findall(r"\*(faultline_[a-z0-9_]+)", sections(page, "#").get("METRICS", "")))
printed = metric_names(daemon_src)
check(printed == shown, f"faultlined(8) METRICS: missing {sorted(printed - shown)}, "
                        f"not printed by the daemon {sorted(shown - printed)}")
fl_page = open(os.path.join(MAN, "faultline.1.scd")).read()
proxy = metric_names([os.path.join(ROOT, "tools", "proxy.c")]) - printed
check(all(n in fl_page for n in proxy),
      f"faultline(1) proxy metrics missing: {sorted(n for n in proxy if n not in fl_page)}")

# ---- faultline.ini(5)
def ini_keys(path):
    out, sec = {}, None
    for line in open(path):
        s = line.strip()
        if not s or s[0] in ";#":
            continue
        mm = re.match(r"\[(.+)\]", s)
        if mm:
            sec = "modality.NAME" if mm.group(1).startswith("modality.") else mm.group(1)
            out.setdefault(sec, {})
            continue
        mm = re.match(r"(\w+)\s*=\s*(.*)", s)
        if mm and sec:
            out[sec].setdefault(mm.group(1), mm.group(2).strip())
    return out


ini = ini_keys(os.path.join(ROOT, "config", "faultline.ini"))
page = open(os.path.join(MAN, "faultline.ini.5.scd")).read()
man = {}
for title, body in sections(page, "#").items():
    mm = re.match(r"\[(.+)\]$", title)
    if not mm:
        continue
    keys = {}
    for line in body.splitlines():
        if line.startswith("\t"):
            continue
        for k in re.findall(r"\*(\w+)\*", line):
            d = re.search(r"\*" + k + r"\* = _(.+?)_(?=[\s,]|$)", line)
            keys[k] = d.group(1) if d else None
    man[mm.group(1)] = keys
check(set(ini) == set(man), f"faultline.ini(5) sections {sorted(man)} != the example's {sorted(ini)}")
parsed = set()
for src in ("lib/config.c", "daemon/dconfig.c"):
    parsed |= set(re.findall(r'"(\w+)"', open(os.path.join(ROOT, src)).read()))


def same(a, b):
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


for sec, keys in ini.items():
    mk = man.get(sec, {})
    for k, v in keys.items():
        if not check(k in mk, f"faultline.ini(5) [{sec}] lacks {k}"):
            continue
        if sec != "modality.NAME" and k != "faults":
            check(mk[k] is not None and same(mk[k], v),
                  f"faultline.ini(5) [{sec}] {k}: default {mk[k]} != the example's {v}")
    for k in mk:
        check(k in keys or k in parsed, f"faultline.ini(5) [{sec}] {k}: no such key")

if failures:
    print(f"manpages: {len(failures)} checks failed", file=sys.stderr)
    sys.exit(1)
print("manpages: all checks passed")
