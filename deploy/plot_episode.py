#!/usr/bin/python3
"""Draws one fault episode as an SVG: the clean signal, the faulted input, the
corrected output with its uncertainty band (+-2 sd, when the scored file has
the <column>_sd columns), the last clean value held through the fault (the
trivial causal estimate, for comparison) and the anomaly score, from the CSVs
that `faultline inject` and `faultline score` write.  Standard library only.

usage: plot_episode.py CLEAN.csv FAULTED.csv LABELS.csv SCORED.csv OUT.svg
"""
import csv
import math
import sys


def read(path):
    with open(path, newline="") as f:
        head = f.readline()
        f.seek(0)
        # SKAB's files separate with semicolons.
        sep = ";" if ";" in head and "," not in head else ","
        return list(csv.DictReader(f, delimiter=sep))


def num(v):
    try:
        x = float(v)
        return x if math.isfinite(x) else None
    except (TypeError, ValueError):
        return None


def main(argv):
    if len(argv) != 6:
        sys.exit(__doc__)
    clean, faulted, labels, scored = (read(p) for p in argv[1:5])
    # The labelled column of the first episode, and its span.
    cols = [k[: -len("_label")] for k in labels[0] if k.endswith("_label")]
    rows = [i for i, r in enumerate(labels) if r["fault"] not in ("0", "")]
    if not rows:
        sys.exit("plot_episode: the labels file has no fault")
    first = rows[0]
    last = first
    while last + 1 < len(labels) and labels[last + 1]["fault"] == labels[first]["fault"]:
        last += 1
    col = next(c for c in cols if labels[first][c + "_label"] == "1")
    name = labels[first]["fault_name"]
    lo, hi = max(0, first - 90), min(len(clean), last + 90)
    # Hold-last-clean: the input before the labelled run, held through it.
    hold, last_clean = [], None
    for r, lab in zip(faulted[lo:hi], labels[lo:hi]):
        if lab[col + "_label"] == "1":
            hold.append(last_clean)
        else:
            last_clean = num(r[col]) if num(r[col]) is not None else last_clean
            hold.append(None)
    series = {
        "clean": [num(r[col]) for r in clean[lo:hi]],
        "faulted input": [num(r[col]) for r in faulted[lo:hi]],
        "corrected": [num(r[col + "_corrected"]) for r in scored[lo:hi]],
        "hold last clean": hold,
    }
    sd = [num(r.get(col + "_sd")) for r in scored[lo:hi]]
    band = [(c - 2 * u, c + 2 * u) if c is not None and u is not None and u > 0 else None
            for c, u in zip(series["corrected"], sd)]
    score = [num(r["score"]) for r in scored[lo:hi]]
    flag = [r["anomaly"] == "1" for r in scored[lo:hi]]
    W, H, pad = 900, 460, 50
    vals = [v for s in series.values() for v in s if v is not None]
    vals += [v for b in band if b for v in b]
    vmin, vmax = min(vals), max(vals)
    vmax = vmax if vmax > vmin else vmin + 1
    n = hi - lo

    def x(i):
        return pad + (W - 2 * pad) * i / max(n - 1, 1)

    def line(ys, y0, y1, a, b, colour, width=1.5, dash=""):
        pts, out = [], []
        for i, v in enumerate(ys):
            if v is None:
                if len(pts) > 1:
                    out.append(pts)
                pts = []
                continue
            pts.append("%.1f,%.1f" % (x(i), y1 - (y1 - y0) * (v - a) / (b - a)))
        if len(pts) > 1:
            out.append(pts)
        d = ' stroke-dasharray="%s"' % dash if dash else ""
        return "".join('<polyline fill="none" stroke="%s" stroke-width="%s"%s points="%s"/>'
                       % (colour, width, d, " ".join(p)) for p in out)

    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="13">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>']
    for i, f in enumerate(flag):
        if f:
            svg.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#fde2e2"/>'
                       % (x(i), pad, (W - 2 * pad) / max(n - 1, 1) + 0.5, H - 2 * pad))
    svg.append('<rect x="%.1f" y="%d" width="%.1f" height="6" fill="#d62728"/>'
               % (x(first - lo), pad - 10, x(last - lo) - x(first - lo)))
    top, mid = pad, pad + (H - 2 * pad) * 0.68

    def yv(v):
        return mid - (mid - top) * (v - vmin) / (vmax - vmin)

    # The band, one polygon per run of samples that carry an uncertainty.
    run = []
    for i, b in enumerate(band + [None]):
        if b is not None:
            run.append(i)
            continue
        if len(run) > 1:
            pts = ["%.1f,%.1f" % (x(j), yv(band[j][1])) for j in run]
            pts += ["%.1f,%.1f" % (x(j), yv(band[j][0])) for j in reversed(run)]
            svg.append('<polygon fill="#1f77b4" fill-opacity="0.18" stroke="none" points="%s"/>'
                       % " ".join(pts))
        run = []
    colours = {"clean": "#2ca02c", "faulted input": "#d62728", "corrected": "#1f77b4",
               "hold last clean": "#ff7f0e"}
    dashes = {"clean": "5,3", "faulted input": "", "corrected": "", "hold last clean": "2,2"}
    for k, ys in series.items():
        svg.append(line(ys, top, mid, vmin, vmax, colours[k], dash=dashes[k]))
    sv = [v for v in score if v is not None] or [0.0]
    svg.append(line(score, mid + 20, H - pad, min(sv), max(sv) + 1e-9, "#555", 1.2))
    svg.append('<text x="%d" y="%d" font-size="15">%s: injected %s (red bar), flagged windows shaded</text>'
               % (pad, 22, col, name))
    for j, (k, c) in enumerate(colours.items()):
        svg.append('<text x="%d" y="%d" fill="%s">%s</text>' % (W - pad - 130, top + 18 + 16 * j, c, k))
    if any(band):
        svg.append('<text x="%d" y="%d" fill="#1f77b4">band: +-2 sd</text>'
                   % (W - pad - 130, top + 18 + 16 * len(colours)))
    svg.append('<text x="%d" y="%d" fill="#555">anomaly score</text>' % (W - pad - 130, mid + 34))
    svg.append('<text x="%d" y="%d" fill="#555">seconds %d to %d of the held-out stretch</text>'
               % (pad, H - 15, lo, hi))
    svg.append("</svg>")
    with open(argv[5], "w") as f:
        f.write("\n".join(svg))


if __name__ == "__main__":
    main(sys.argv)
