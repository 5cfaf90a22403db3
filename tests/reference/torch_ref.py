#!/usr/bin/python3
"""PyTorch reference values for the parity test of lib/nn.c (test_nn_parity).

Usage: torch_ref.py OUTPUT

Computes, for deterministically seeded random configurations, the forward
outputs and gradients of Linear, Conv1d, ConvTranspose1d, the activations,
the masked MSE and the supervised NT-Xent of faultline/nn.h, and the largest
singular value of explicit conv1d / conv-transpose1d operator matrices, and
writes them to OUTPUT.

Precision: every input is drawn in float64 and rounded to float32 (so the C
side, which reads floats, starts from exactly the same numbers); every
reference output is then computed in float64.  The C side computes in float32,
so the comparison measures lib/nn.c's rounding plus any real error.

File format (text, one record per line, no JSON needed to read it):

    # comment lines start with '#'
    NAME COUNT V1 V2 ... VCOUNT

NAME has no spaces; COUNT is the number of values that follow; values are
printed with 17 significant digits (exact for float64, hence for the float32
inputs too) and may be 'nan'.  Integer values (shapes, labels) are written as
integers.  Records:

    dense.count 1 N                  then for K in 0..N-1:
    dense.K.cfg 3 B I O
    dense.K.{x,w,b,dy,y,dx,dw,db}    x (B,I) W (O,I) b (O) dy,y (B,O)

    conv1d.count / convt1d.count 1 N then for K in 0..N-1:
    conv1d.K.cfg 9 cin cout k stride pad dil out_pad B tin
    conv1d.K.{x,w,b,dy,y,dx,dw,db}   x (B,cin,tin) W (cout,cin,k) for conv1d,
                                     W (cin,cout,k) for convt1d, y (B,cout,tout)

    act.count 1 N
    act.K.cfg 2 kind alpha           kind as fl_act: 0 identity 1 relu 2 leaky 3 tanh
    act.K.{x,dy,y,dx}

    mse.count 1 N
    mse.K.cfg 1 n
    mse.K.{pred,target,mask,loss,dpred}   mask has COUNT 0 for "no mask";
                                          masked-out pred/target hold nan

    ntxent.count 1 N
    ntxent.K.cfg 3 B D tau
    ntxent.K.{x,label,loss,dx}       x (B,D) raw embeddings; the loss is
                                     NT-Xent(l2normalise(x)), dx its gradient

    spec_conv1d.count / spec_convt1d.count 1 N
    spec_conv1d.K.cfg 9 cin cout k stride pad dil out_pad 1 tin
    spec_conv1d.K.w                  weights as above
    spec_conv1d.K.sigma 1 s          largest singular value (numpy SVD)

The script is deterministic: fixed seeds, float64 CPU arithmetic, fixed
output formatting.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


class Writer:
    def __init__(self, f):
        self.f = f

    def rec(self, name, values):
        vals = []
        for v in values:
            if isinstance(v, (int, np.integer)):
                vals.append(str(int(v)))
            else:
                vals.append("%.17g" % float(v))
        self.f.write("%s %d%s%s\n" % (name, len(vals), " " if vals else "", " ".join(vals)))

    def tensor(self, name, t):
        self.rec(name, [float(v) for v in t.detach().reshape(-1).tolist()])


def f32(t):
    """Rounds a float64 tensor to float32 values, kept in float64."""
    return t.float().double()


def randn(gen, *shape):
    return f32(torch.randn(*shape, generator=gen))


def conv_out_len(kind, cin, cout, k, stride, pad, dil, out_pad, tin):
    if kind == "conv1d":
        span = tin + 2 * pad - dil * (k - 1) - 1
        return span // stride + 1 if span >= 0 else -1
    return (tin - 1) * stride - 2 * pad + dil * (k - 1) + out_pad + 1


def run_conv(kind, x, w, b, stride, pad, dil, out_pad):
    if kind == "conv1d":
        return F.conv1d(x, w, b, stride=stride, padding=pad, dilation=dil)
    return F.conv_transpose1d(x, w, b, stride=stride, padding=pad, output_padding=out_pad,
                              dilation=dil)


def layer_grads(out, dy, *leaves):
    (out * dy).sum().backward()
    return [t.grad for t in leaves]


def dense_cases(w_, gen):
    cfgs = [(1, 3, 2), (4, 7, 5), (3, 16, 9), (5, 33, 12)]
    w_.rec("dense.count", [len(cfgs)])
    for i, (B, I, O) in enumerate(cfgs):
        x = randn(gen, B, I).requires_grad_()
        w = randn(gen, O, I).requires_grad_()
        b = randn(gen, O).requires_grad_()
        dy = randn(gen, B, O)
        y = F.linear(x, w, b)
        dx, dw, db = layer_grads(y, dy, x, w, b)
        p = "dense.%d." % i
        w_.rec(p + "cfg", [B, I, O])
        for n, t in (("x", x), ("w", w), ("b", b), ("dy", dy), ("y", y), ("dx", dx), ("dw", dw),
                     ("db", db)):
            w_.tensor(p + n, t)


def conv_configs(kind, rng):
    """Ten configurations: the default model's layer shape first, then random
    ones cycling through strides 1, 2, 3 and dilations 1, 2 with odd and even
    lengths, padding and (for convt1d) output padding, batch 1 to 4."""
    if kind == "conv1d":
        cfgs = [(3, 16, 5, 2, 2, 1, 0, 4, 60), (16, 32, 5, 2, 2, 1, 0, 2, 30)]
    else:
        cfgs = [(32, 16, 5, 2, 2, 1, 1, 2, 15), (16, 3, 5, 2, 2, 1, 1, 4, 30)]
    i = 0
    while len(cfgs) < 10:
        stride = (1, 2, 3)[i % 3]
        dil = (1, 2)[(i // 3) % 2]
        k = int(rng.integers(1, 7))
        pad = int(rng.integers(0, 4))
        cin = int(rng.integers(1, 6))
        cout = int(rng.integers(1, 6))
        B = int(rng.integers(1, 5))
        tin = int(rng.integers(3, 26))
        out_pad = 0
        if kind == "convt1d" and max(stride, dil) > 1:
            out_pad = int(rng.integers(0, max(stride, dil)))
        i += 1
        if conv_out_len(kind, cin, cout, k, stride, pad, dil, out_pad, tin) < 1:
            continue
        cfgs.append((cin, cout, k, stride, pad, dil, out_pad, B, tin))
    return cfgs


def conv_cases(w_, gen, rng, kind):
    cfgs = conv_configs(kind, rng)
    w_.rec(kind + ".count", [len(cfgs)])
    for i, (cin, cout, k, stride, pad, dil, out_pad, B, tin) in enumerate(cfgs):
        x = randn(gen, B, cin, tin).requires_grad_()
        wshape = (cout, cin, k) if kind == "conv1d" else (cin, cout, k)
        w = (randn(gen, *wshape) * 0.5).requires_grad_()
        b = randn(gen, cout).requires_grad_()
        y = run_conv(kind, x, w, b, stride, pad, dil, out_pad)
        assert y.shape[2] == conv_out_len(kind, cin, cout, k, stride, pad, dil, out_pad, tin)
        dy = randn(gen, *y.shape)
        dx, dw, db = layer_grads(y, dy, x, w, b)
        p = "%s.%d." % (kind, i)
        w_.rec(p + "cfg", [cin, cout, k, stride, pad, dil, out_pad, B, tin])
        for n, t in (("x", x), ("w", w), ("b", b), ("dy", dy), ("y", y), ("dx", dx), ("dw", dw),
                     ("db", db)):
            w_.tensor(p + n, t)


def act_cases(w_, gen):
    cfgs = [(2, 0.1), (3, 0.0), (1, 0.0), (0, 0.0)]
    w_.rec("act.count", [len(cfgs)])
    for i, (kind, alpha) in enumerate(cfgs):
        x = (randn(gen, 50) * 2).requires_grad_()
        dy = randn(gen, 50)
        if kind == 2:
            y = F.leaky_relu(x, alpha)
        elif kind == 3:
            y = torch.tanh(x)
        elif kind == 1:
            y = F.relu(x)
        else:
            y = x * 1.0
        (dx,) = layer_grads(y, dy, x)
        p = "act.%d." % i
        w_.rec(p + "cfg", [kind, alpha])
        for n, t in (("x", x), ("dy", dy), ("y", y), ("dx", dx)):
            w_.tensor(p + n, t)


def mse_cases(w_, gen):
    cfgs = [(37, True), (64, True), (20, False)]
    w_.rec("mse.count", [len(cfgs)])
    for i, (n, masked) in enumerate(cfgs):
        pred = randn(gen, n)
        target = randn(gen, n)
        if masked:
            mask = (torch.rand(n, generator=gen) > 0.3).double()
            mask[0] = 1.0  # at least one counted element
        else:
            mask = torch.ones(n)
        pred = pred.requires_grad_()
        diff = torch.where(mask > 0, pred - target, torch.zeros(n))
        loss = (mask * diff * diff).sum() / mask.sum()
        loss.backward()
        # Missing values: masked-out predictions and targets hold NaN in the
        # file, which the C side must never read as numbers.
        pred_out = pred.detach().clone()
        target_out = target.clone()
        for j in range(n):
            if mask[j] == 0:
                if j % 2 == 0:
                    pred_out[j] = float("nan")
                target_out[j] = float("nan")
        p = "mse.%d." % i
        w_.rec(p + "cfg", [n])
        w_.tensor(p + "pred", pred_out)
        w_.tensor(p + "target", target_out)
        if masked:
            w_.tensor(p + "mask", mask)
        else:
            w_.rec(p + "mask", [])
        w_.rec(p + "loss", [loss.item()])
        w_.tensor(p + "dpred", pred.grad)


def ntxent(z, label, tau):
    """The supervised NT-Xent of faultline/nn.h, written from its formula:

    loss = mean over anchors i of
           -1/|P(i)| sum_{p in P(i)} log(exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau))

    s = z z^T; P(i) = {j != i : label[j] == label[i]}; samples with a negative
    label are never anchors nor positives; anchors without positives are
    skipped; with no anchor the loss is 0."""
    B = z.shape[0]
    s = z @ z.t() / tau
    total = z.new_zeros(())
    anchors = 0
    for i in range(B):
        if label[i] < 0:
            continue
        pos = [j for j in range(B) if j != i and label[j] == label[i]]
        if not pos:
            continue
        others = [a for a in range(B) if a != i]
        lse = torch.logsumexp(s[i, others], dim=0)
        total = total - sum(s[i, j] - lse for j in pos) / len(pos)
        anchors += 1
    return total / anchors if anchors else total


def ntxent_cases(w_, gen):
    cfgs = [
        (8, 5, 0.5, [0, -1, 0, 0, -1, -1, 0, -1]),  # clean-anchored, as the design trains
        (9, 4, 0.1, [0, 1, -1, 0, 1, 2, 0, 1, -1]),  # two positive classes and a singleton
        (6, 3, 1.0, [0, 0, 0, 0, 0, -1]),
        (16, 32, 0.07, [0] * 6 + [-1] * 10),  # the head's size, a low temperature
        (12, 8, 2.0, [1, 0, 1, 0, -1, 3, 3, -1, 0, 1, -1, 2]),
    ]
    w_.rec("ntxent.count", [len(cfgs)])
    for i, (B, D, tau, label) in enumerate(cfgs):
        x = randn(gen, B, D).requires_grad_()
        z = F.normalize(x, dim=1, eps=1e-12)
        loss = ntxent(z, label, tau)
        loss.backward()
        p = "ntxent.%d." % i
        w_.rec(p + "cfg", [B, D, tau])
        w_.tensor(p + "x", x)
        w_.rec(p + "label", label)
        w_.rec(p + "loss", [loss.item()])
        w_.tensor(p + "dx", x.grad)


def operator_sigma(kind, w, cin, k, stride, pad, dil, out_pad, tin):
    """Largest singular value of the layer's linear operator on inputs
    (1, cin, tin): the matrix is built column by column from unit vectors."""
    n = cin * tin
    cols = []
    with torch.no_grad():
        for j in range(n):
            e = torch.zeros(n)
            e[j] = 1.0
            cols.append(run_conv(kind, e.reshape(1, cin, tin), w, None, stride, pad, dil,
                                 out_pad).reshape(-1))
    A = torch.stack(cols, dim=1).numpy()  # (cout * tout, cin * tin)
    return float(np.linalg.svd(A, compute_uv=False)[0])


def spectral_cases(w_, gen, kind):
    if kind == "conv1d":
        cfgs = [(1, 1, 3, 1, 1, 1, 0, 10), (2, 3, 5, 2, 2, 1, 0, 11), (3, 2, 3, 2, 1, 2, 0, 12),
                (2, 2, 4, 3, 1, 1, 0, 13), (3, 3, 1, 1, 0, 1, 0, 6), (1, 4, 5, 2, 0, 1, 0, 9)]
    else:
        cfgs = [(1, 1, 3, 1, 1, 1, 0, 10), (3, 2, 5, 2, 2, 1, 1, 6), (2, 3, 3, 2, 1, 2, 1, 7),
                (2, 2, 4, 3, 1, 1, 2, 5), (3, 3, 1, 1, 0, 1, 0, 6), (4, 1, 5, 2, 0, 1, 0, 5)]
    name = "spec_" + kind
    w_.rec(name + ".count", [len(cfgs)])
    for i, (cin, cout, k, stride, pad, dil, out_pad, tin) in enumerate(cfgs):
        wshape = (cout, cin, k) if kind == "conv1d" else (cin, cout, k)
        w = randn(gen, *wshape)
        sigma = operator_sigma(kind, w, cin, k, stride, pad, dil, out_pad, tin)
        p = "%s.%d." % (name, i)
        w_.rec(p + "cfg", [cin, cout, k, stride, pad, dil, out_pad, 1, tin])
        w_.tensor(p + "w", w)
        w_.rec(p + "sigma", [sigma])


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: torch_ref.py OUTPUT\n")
        return 2
    gen = torch.Generator().manual_seed(20260325)
    rng = np.random.default_rng(20260325)
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        w_ = Writer(f)
        f.write("# faultline torch reference, format 1 (see tests/reference/torch_ref.py)\n")
        f.write("# torch %s, reference values in float64 from float32 inputs\n" %
                torch.__version__.split("+")[0])
        dense_cases(w_, gen)
        conv_cases(w_, gen, rng, "conv1d")
        conv_cases(w_, gen, rng, "convt1d")
        act_cases(w_, gen)
        mse_cases(w_, gen)
        ntxent_cases(w_, gen)
        spectral_cases(w_, gen, "conv1d")
        spectral_cases(w_, gen, "convt1d")
    # Renamed into place so that an interrupted run never leaves a partial
    # file that the parity test would read as complete.
    import os
    os.replace(tmp, sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
