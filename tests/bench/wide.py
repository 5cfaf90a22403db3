#!/usr/bin/python3
"""Width at scale: the 504-sensor simulator (63 pump units) against the
8-sensor one (1 unit), the same hours of data, modalities chosen by
`faultline init`.  Prints the tables of docs/results/width.md.

  OPENBLAS_NUM_THREADS=1 nice -n 5 /usr/bin/python3 tests/bench/wide.py \\
      --build build --out /tmp/wide [--hours 1] [--heldout-rows 1200]
      [--seeds 1,2,3] [--epochs E1,E2] [--parts train,eval,memory,cpu]
      [--runs 3] [--episodes 6] [--batch 64] [--batch-memory MB] [--pace 5]

Parts (each reuses what an earlier run left in --out):
  train   training wall and CPU time on one core (taskset -c 0,
          OPENBLAS_NUM_THREADS=1) per seed; with --epochs the schedule is
          shortened and the time at the default schedule is extrapolated
          from the measured seconds per epoch (stage 1 and 2 separately) plus
          the measured rest (normalisation, calibration, estimator): said so
          in the table
  eval    `faultline eval` on the held-out stretch (every fault type,
          --episodes per type): AUROC, detected episodes, localisation (the
          faulted modality named) and, for the wide plant, the faulted unit
          named (the named modality's channels belong to the unit)
  memory  faultlined serving each model: VmHWM and VmRSS after streaming
          (4 streams, stride 1, --pace ticks per second: a live feed, no
          backlog) against the model's weight bytes
  cpu     faultlined's CPU seconds per window scored, both models
          interleaved in one run, medians of --runs
Both run once per value of --batch (faultlined's [output] batch, a list).
"""
import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))
import zmq  # noqa: E402

import fldtest as T  # noqa: E402
from daemon_memory import breakdown, fmt, status  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("--out", default="/tmp/faultline-wide")
ap.add_argument("--hours", type=float, default=1.0)
ap.add_argument("--heldout-rows", type=int, default=1200)
ap.add_argument("--seeds", default="1,2,3")
ap.add_argument("--epochs", default=None, help="E1,E2: a shortened schedule")
ap.add_argument("--parts", default="train,eval,memory,cpu")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--pace", type=float, default=5.0,
                help="memory: ticks per second sent to the running daemon")
ap.add_argument("--batch-memory", default="",
                help="memory, cpu: faultlined's [output] batch_memory in MB, a list "
                "(default: its own)")
ap.add_argument("--batch", default="64", help="memory, cpu: faultlined's [output] batch (a list)")
ap.add_argument("--episodes", type=int, default=6)
ap.add_argument("--faults", default=None, help="eval: these fault types only (default: all)")
A = ap.parse_args()
FL = os.path.abspath(os.path.join(A.build, "tools", "faultline"))
FLD = os.path.abspath(os.path.join(A.build, "daemon", "faultlined"))
OUT = os.path.abspath(A.out)
os.makedirs(OUT, exist_ok=True)
PLANTS = [("wide", 63), ("narrow", 1)]
SEEDS = [int(s) for s in A.seeds.split(",")]
BATCHES = [(int(b), float(m) if m else None) for b in A.batch.split(",")
           for m in (A.batch_memory.split(",") if A.batch_memory else [""])]
PARTS = A.parts.split(",")
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")


def path(*p):
    return os.path.join(OUT, *p)


def data(name, units):
    """name_train.csv (hours) and name_heldout.csv from one simulated run,
    and name.ini from init on the training part."""
    rows = int(A.hours * 3600)
    full, tr, ho, ini = (path(f"{name}_{k}") for k in ("all.csv", "train.csv", "heldout.csv",
                                                         "init.ini"))
    if not os.path.exists(ini):
        subprocess.run([FL, "simulate", "--units", str(units), "--rows",
                        str(rows + A.heldout_rows), "--out", full], check=True)
        with open(full) as f:
            lines = f.readlines()
        with open(tr, "w") as f:
            f.writelines(lines[:1 + rows])
        with open(ho, "w") as f:
            f.writelines(lines[:1] + lines[1 + rows:])
        subprocess.run([FL, "init", "--data", tr, "--out", ini], check=True,
                       capture_output=True)
    return tr, ho, ini


def config(name, ini):
    """The init config, with a shortened schedule under --epochs."""
    if not A.epochs:
        return ini
    e1, e2 = A.epochs.split(",")
    cfg = path(f"{name}_e{e1}_{e2}.ini")
    T.write_config(cfg, ini, {"train": {"epochs1": e1, "epochs2": e2}})
    return cfg


def cpu_children():
    t = os.times()
    return t.children_user + t.children_system


def train(name, units, seed):
    tr, _, ini = data(name, units)
    cfg = config(name, ini)
    model = path(f"{name}_s{seed}.model")
    log = path(f"{name}_s{seed}.train.log")
    c0, t0 = cpu_children(), time.time()
    p = subprocess.run(["taskset", "-c", "0", FL, "train", "--config", cfg, "--data", tr,
                        "--out", model, "--seed", str(seed)], env=ENV, capture_output=True,
                       text=True)
    wall, cpu = time.time() - t0, cpu_children() - c0
    with open(log, "w") as f:
        f.write(p.stderr)
    if p.returncode:
        sys.exit(f"train {name} seed {seed}: {p.stderr}")
    # "stage S epoch e/E ... elapsed X.Xs": the stage's elapsed time so far.
    st = {1: (0, 0.0), 2: (0, 0.0)}
    for m in re.finditer(r"stage (\d) epoch (\d+)/\d+ .*?elapsed ([\d.]+)s", p.stderr):
        st[int(m.group(1))] = (int(m.group(2)), float(m.group(3)))
    params = int(re.search(r"\((\d+) parameters", p.stderr).group(1))
    r = {"wall": wall, "cpu": cpu, "epochs1": st[1][0], "s1": st[1][1], "epochs2": st[2][0],
         "s2": st[2][1], "params": params}
    r["rest"] = wall - r["s1"] - r["s2"]
    with open(path(f"{name}_s{seed}.train.json"), "w") as f:
        json.dump(r, f)
    return r


def defaults_epochs():
    cp = {"epochs1": 40, "epochs2": 30}
    with open(os.path.join(HERE, "..", "..", "config", "faultline.ini")) as f:
        for ln in f:
            m = re.match(r"(epochs[12])\s*=\s*(\d+)", ln)
            if m:
                cp[m.group(1)] = int(m.group(2))
    return cp


def part_train():
    d = defaults_epochs()
    print(f"## training on one core ({A.hours:g} h of data, "
          f"{'epochs ' + A.epochs if A.epochs else 'default schedule'})\n")
    print("| plant | sensors | parameters | seed | stage 1 s (epochs) | stage 2 s (epochs) | "
          "rest s | wall s | CPU s | at the default schedule, s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, units in PLANTS:
        for seed in SEEDS:
            r = train(name, units, seed)
            est = r["wall"]
            if A.epochs:
                est = (r["s1"] / max(1, r["epochs1"]) * d["epochs1"] +
                       r["s2"] / max(1, r["epochs2"]) * d["epochs2"] + r["rest"])
            print(f"| {name} | {8 * units} | {r['params']} | {seed} | {r['s1']:.1f} "
                  f"({r['epochs1']}) | {r['s2']:.1f} ({r['epochs2']}) | {r['rest']:.1f} | "
                  f"{r['wall']:.1f} | {r['cpu']:.1f} | "
                  f"{'<= %.0f (extrapolated)' % est if A.epochs else '%.0f' % est} |",
                  flush=True)
    print()


def blabel(b):
    return f"{b[0]}" + (f", {b[1]:g} MB" if b[1] else "")


def unit_of(mod_channels):
    units = {c.split("_", 1)[0] for c in mod_channels}
    return units.pop() if len(units) == 1 else None


def part_eval():
    print(f"## injected faults on the held-out {A.heldout_rows} rows "
          f"({A.episodes} episodes per type of {A.faults or 'every type'}, "
          f"seed {SEEDS[0]}'s model)\n")
    print("| plant | sensors | modalities | AUROC (mean over types) | detected | "
          "localised (modality) | false alarms, clean rows | modalities within one unit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, units in PLANTS:
        _, ho, ini = data(name, units)
        model = path(f"{name}_s{SEEDS[0]}.model")
        js = path(f"{name}_eval.json")
        cfg = config(name, ini)
        if A.faults:
            cfg = path(f"{name}_eval.ini")
            T.write_config(cfg, config(name, ini), {"train": {"faults": A.faults}})
        if not os.path.exists(js) or os.path.getmtime(js) < os.path.getmtime(model):
            p = subprocess.run([FL, "eval", "--model", model, "--config", cfg,
                                "--data", ho, "--episodes", str(A.episodes), "--json", js],
                               env=ENV, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"eval {name}: {p.stderr}")
            with open(path(f"{name}_eval.txt"), "w") as f:
                f.write(p.stdout)
        with open(js) as f:
            ev = json.load(f)
        mods = T.modalities(ini)
        one_unit = sum(unit_of(c) is not None for _, _, c in mods) if units > 1 else len(mods)
        ov, per = ev["overall"], ev["faults"]
        au = [v["auroc"] for v in per.values() if isinstance(v.get("auroc"), (int, float))]
        types = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in per.items()
                          if isinstance(v.get("auroc"), (int, float)))
        print(f"| {name} | {8 * units} | {len(mods)} | {sum(au) / len(au):.3f} ({types}) | "
              f"{ov['detected']}/{ov['episodes']} | {ov['localised']}/{ov['detected']} | "
              f"{100 * ev['clean']['far']:.1f} % | "
              f"{one_unit} of {len(mods)} |", flush=True)
    print()


def weight_bytes(model):
    with open(model, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in h.items()
               if k != "__metadata__")


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def reports(ports):
    """faultline_reports_total; 0 while a busy loop (a batch of wide windows
    takes seconds on a loaded machine) leaves the scrape unanswered."""
    try:
        return T.metrics(ports["http"])[0].get("faultline_reports_total", 0)
    except OSError:
        return 0


def serve(name, units, streams, ticks, measure, batch, pace=None):
    batch, bmem = batch
    """A faultlined on name's model; frames of `streams` streams x `ticks`
    queued while it is stopped, then drained at stride 1; with pace, sent
    at `pace` ticks per second to the running daemon instead, so that no
    backlog builds up.  measure(pid, before) is called before the frames go
    (before=True) and after every window is reported."""
    _, ho, ini = data(name, units)
    model = path(f"{name}_s{SEEDS[0]}.model")
    cfg, ports = T.daemon_config(OUT, f"{name}_daemon", model, config(name, ini),
                                 input={"rcvhwm": 0, "max_streams": 64},
                                 output=dict({"stride": 1, "batch": batch, "sndhwm": 0},
                                             **({"batch_memory": bmem} if bmem else {})),
                                 log={"level": "notice"})
    d = T.Daemon(FLD, cfg, env={"OPENBLAS_NUM_THREADS": "1"})
    try:
        d.wait_http(ports["http"], timeout=120)
        pb = T.load_proto(OUT)
        tab = T.Table(ho, T.modalities(ini))
        msgs = [[f"frame/b{i % streams}".encode(),
                 tab.frame(pb, f"b{i % streams}", i // streams,
                           (i // streams) % len(tab.rows)).SerializeToString()]
                for i in range(streams * ticks)]
        ctx = zmq.Context()
        pub, _ = T.publisher(ctx, f"tcp://127.0.0.1:{ports['in']}")
        if pace:
            time.sleep(0.5)
            measure(d.p.pid, True)
            t0 = time.monotonic()
            for i, m in enumerate(msgs):
                if i % streams == 0:
                    time.sleep(max(0.0, t0 + i // streams / pace - time.monotonic()))
                pub.send_multipart(m)
        else:
            os.kill(d.p.pid, signal.SIGSTOP)
            for m in msgs:
                pub.send_multipart(m)
            time.sleep(0.5)
            measure(d.p.pid, True)
            os.kill(d.p.pid, signal.SIGCONT)
        want = streams * (ticks - 59)
        while reports(ports) < want:
            time.sleep(0.05)
        measure(d.p.pid, False)
        ctx.destroy(linger=0)
        return want
    finally:
        d.stop()


def part_memory():
    print(f"## faultlined's resident memory (4 streams, stride 1, {A.pace:g} ticks/s)\n")
    print("| plant | sensors | batch | weight bytes (MB) | VmRSS idle (MB) | VmHWM (MB) | "
          "VmHWM - weights (MB) | target: VmHWM < 20 MB + weights |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    kinds = []
    for batch in BATCHES:
        for name, units in PLANTS:
            got = {}

            def measure(pid, before):
                if before:
                    got["idle"] = status(pid, "VmRSS")
                    got["idle_kinds"] = fmt(breakdown(pid))
                got["hwm"] = status(pid, "VmHWM")
                got["kinds"] = fmt(breakdown(pid))
            serve(name, units, 4, 600, measure, batch, pace=A.pace)
            wb = weight_bytes(path(f"{name}_s{SEEDS[0]}.model")) / 2**20
            hwm = got["hwm"] / 1024
            print(f"| {name} | {8 * units} | {blabel(batch)} | {wb:.1f} | {got['idle'] / 1024:.1f} | "
                  f"{hwm:.1f} | {hwm - wb:.1f} | {'met' if hwm < 20 + wb else 'missed'} |",
                  flush=True)
            kinds.append(f"{name}, batch {blabel(batch)}: idle {got['idle_kinds']}; "
                         f"after {got['kinds']}")
    print("\nResident MB by mapping (tests/bench/daemon_memory.py's kinds):\n")
    for k in kinds:
        print(f"- {k}")
    print()


def part_cpu():
    got = {(name, b): [] for name, _ in PLANTS for b in BATCHES}
    for _ in range(A.runs):
        for batch in BATCHES:
            for name, units in PLANTS:
                c = {}

                def measure(pid, before):
                    c["before" if before else "after"] = proc_cpu(pid)
                n = serve(name, units, 4, 600, measure, batch)
                got[name, batch].append(n / (c["after"] - c["before"]))
    print(f"## faultlined windows per CPU-second (4 streams x 600 ticks, stride 1; "
          f"median of {A.runs} runs, interleaved)\n")
    print("| plant | sensors | batch | windows per CPU-second (median) | runs |")
    print("| --- | --- | --- | --- | --- |")
    med = {k: sorted(v)[len(v) // 2] for k, v in got.items()}
    for batch in BATCHES:
        for name, units in PLANTS:
            print(f"| {name} | {8 * units} | {blabel(batch)} | {med[name, batch]:.0f} | "
                  f"{', '.join(f'{x:.0f}' for x in got[name, batch])} |")
    for batch in BATCHES:
        print(f"\nbatch {blabel(batch)}: wide / narrow {med['wide', batch] / med['narrow', batch]:.3f} "
              f"(channels: {504 / 8:.0f}x)", flush=True)
    print()


for part in PARTS:
    {"train": part_train, "eval": part_eval, "memory": part_memory, "cpu": part_cpu}[part]()
