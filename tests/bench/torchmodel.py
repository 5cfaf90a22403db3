"""faultline's model in PyTorch, loaded from a faultline safetensors file.

A faithful nn.Module of lib/model.c (per-modality Conv1d encoders with the
first layer's stride and kernel set by the modality's rate, the fused latent
stacked modality by modality, the residual dense compute block, the
ConvTranspose1d decoders with their output padding, the contrastive head with
its L2-normalised embedding), lib/model.c's standardisation (clamp, NaN
masks, a drifting modality's least-squares trend removed), and one training
step of lib/train.c (masked MSE over modalities, clean-anchored NT-Xent,
per-module clipping by global norm, Adam, and the Lipschitz projection of
every layer after its module's step, by Lanczos on the layer's operator).  Used by tests/bench/bench_torch.py and tests/bench/pydaemon.py.
"""
import json
import struct

import numpy as np
import torch
import torch.nn.functional as F


def read_safetensors(path):
    """(tensors {name: float32 array}, metadata {key: str}); json + numpy."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, en = e["data_offsets"]
        out[name] = np.frombuffer(data[b:en], dtype="<f4").reshape(e["shape"]).copy()
    return out, meta


def first_conv(spec, r):
    """(k, stride, pad) of a modality's first encoder layer (fl__first_conv)."""
    if r > 1:
        return 3 * r, 2 * r, r
    return spec["kernel"], 2, spec["kernel"] // 2


def convt_len(tin, k, s, p, op):
    return (tin - 1) * s - 2 * p + k + op


class Net(torch.nn.Module):
    def __init__(self, spec, t):
        super().__init__()
        self.spec = spec
        self.mods = spec["modalities"]
        W, e1, e2 = spec["window"], spec["enc1"], spec["enc2"]
        self.L = W // 4
        self.Z = len(self.mods) * e2 * self.L
        self.leak = spec["leak"]
        P = lambda a: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)))
        self.params = torch.nn.ParameterDict()
        self.layers = []  # (name, kind, module, geometry)
        for md in self.mods:
            n, r, C = md["name"], md["rate"], len(md["channels"])
            k, s, p = first_conv(spec, r)
            self.layers.append((f"enc.{n}.0", "conv", "encoder", dict(s=s, p=p, op=0, tin=W * r)))
            self.layers.append((f"enc.{n}.1", "conv", "encoder", dict(s=2, p=2, op=0, tin=2 * self.L)))
        for md in self.mods:
            n, r, C = md["name"], md["rate"], len(md["channels"])
            k, s, p = first_conv(spec, r)
            op = W * r - convt_len(2 * self.L, k, s, p, 0)
            self.layers.append((f"dec.{n}.0", "convt", "decoder", dict(s=2, p=2, op=1, tin=self.L)))
            self.layers.append((f"dec.{n}.1", "convt", "decoder", dict(s=s, p=p, op=op, tin=2 * self.L)))
        for name, mod in (("block.0", "block"), ("block.1", "block"), ("block.2", "block"),
                          ("head.0", "head"), ("head.1", "head")):
            self.layers.append((name, "dense", mod, {}))
        for name, kind, mod, g in self.layers:
            self.params[name.replace(".", "_") + "_w"] = P(t[name + ".weight"])
            self.params[name.replace(".", "_") + "_b"] = P(t[name + ".bias"])
        self.geom = {name: (kind, g) for name, kind, _, g in self.layers}
        self.v = {}  # Lanczos warm starts (Ritz vectors), as in lib/model.c

    def w(self, name):
        return self.params[name.replace(".", "_") + "_w"]

    def b(self, name):
        return self.params[name.replace(".", "_") + "_b"]

    def layer(self, name, x):
        kind, g = self.geom[name]
        if kind == "dense":
            return F.linear(x, self.w(name), self.b(name))
        if kind == "conv":
            return F.conv1d(x, self.w(name), self.b(name), stride=g["s"], padding=g["p"])
        return F.conv_transpose1d(x, self.w(name), self.b(name), stride=g["s"], padding=g["p"],
                                  output_padding=g["op"])

    def act(self, x):
        return F.leaky_relu(x, self.leak)

    def encode(self, xs):
        """xs: [(B, C, T)] per modality -> z (B, Z)."""
        hs = []
        for md, x in zip(self.mods, xs):
            n = md["name"]
            h = self.act(self.layer(f"enc.{n}.1", self.act(self.layer(f"enc.{n}.0", x))))
            hs.append(h.flatten(1))
        return torch.cat(hs, 1)

    def block(self, z):
        h = self.act(self.layer("block.0", z))
        h = self.act(self.layer("block.1", h))
        return z + self.layer("block.2", h)

    def decode(self, z):
        B, seg, outs = z.shape[0], self.spec["enc2"] * self.L, []
        for i, md in enumerate(self.mods):
            n = md["name"]
            zi = z[:, i * seg:(i + 1) * seg].reshape(B, self.spec["enc2"], self.L)
            outs.append(self.layer(f"dec.{n}.1", self.act(self.layer(f"dec.{n}.0", zi))))
        return outs

    def head(self, z):
        p = self.layer("head.1", self.act(self.layer("head.0", z)))
        return p / p.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, xs):
        """The model's forward pass (block and head on): (outputs, embedding)."""
        z = self.encode(xs)
        return self.decode(self.block(z)), self.head(z)

    # ---- Lipschitz projection (lib/nn.c fl__power, lib/model.c fl_model_project)

    def _ops(self, name):
        kind, g = self.geom[name]
        w = self.w(name).detach()
        if kind == "dense":
            return (lambda v: w @ v), (lambda u: w.t() @ u), w.shape[1]
        tin = g["tin"]
        cin = w.shape[1] if kind == "conv" else w.shape[0]
        if kind == "conv":
            tout = (tin + 2 * g["p"] - w.shape[2]) // g["s"] + 1
            op = tin - ((tout - 1) * g["s"] - 2 * g["p"] + w.shape[2])
            ap = lambda v: F.conv1d(v.view(1, cin, tin), w, stride=g["s"], padding=g["p"]).flatten()
            ad = lambda u: F.conv_transpose1d(u.view(1, w.shape[0], tout), w, stride=g["s"],
                                              padding=g["p"], output_padding=op).flatten()
        else:
            tout = (tin - 1) * g["s"] - 2 * g["p"] + w.shape[2] + g["op"]
            ap = lambda v: F.conv_transpose1d(v.view(1, cin, tin), w, stride=g["s"], padding=g["p"],
                                              output_padding=g["op"]).flatten()
            ad = lambda u: F.conv1d(u.view(1, w.shape[1], tout), w, stride=g["s"],
                                    padding=g["p"]).flatten()
        return ap, ad, cin * tin

    @torch.no_grad()
    def project(self, module, target, tol=1e-4, iters=200):
        for name, kind, mod, g in self.layers:
            if mod != module or not target > 0:
                continue
            ap, ad, nin = self._ops(name)
            sigma, self.v[name] = spectral(ap, ad, nin, self.v.get(name), tol, iters)
            if sigma > target:
                self.w(name).mul_(target / sigma)


KRYLOV = 24  # lib/nn.c FL__KRYLOV


def spectral(ap, ad, n, v=None, tol=1e-4, iters=200):
    """lib/nn.c fl__power: restarted Lanczos on A^T A with full
    reorthogonalisation from the warm start v (None: the seeded start), until
    the top Ritz value theta has residual r <= tol * theta (tol floored at
    1e-6) or iters products pass.  Returns (sqrt(theta + max(r, tol theta)),
    Ritz vector):
    an upper-side figure of the largest singular value.  Products in float32
    as in C, the basis in float64."""
    m = min(n, KRYLOV)
    eps = max(tol, 1e-6)
    if v is None or not (0 < v.norm().item() < float("inf")):
        v = torch.randn(n, generator=torch.Generator().manual_seed(0x5eed))
    q = torch.zeros(m + 1, n, dtype=torch.float64)
    q[0] = v.double() / v.double().norm()
    theta = res = 0.0
    used = 0
    while True:
        a, b, k, stop = [], [], 0, False
        s = None
        while k < m and used < iters:
            w = ad(ap(q[k].float())).double()
            used += 1
            for p in range(2):  # full reorthogonalisation, twice
                c = q[:k + 1] @ w
                w = w - q[:k + 1].t() @ c
                if p == 0:
                    a.append(c[k].item())
            beta = w.norm().item()
            b.append(beta)
            k += 1
            T = torch.diag(torch.tensor(a, dtype=torch.float64))
            if k > 1:
                off = torch.tensor(b[:k - 1], dtype=torch.float64)
                T += torch.diag(off, 1) + torch.diag(off, -1)
            ev, evec = torch.linalg.eigh(T)
            theta, s = ev[-1].item(), evec[:, -1]
            res = beta * abs(s[-1].item())
            if not theta > 0:
                theta = res = 0.0
                stop = True
                break
            if res <= eps * theta or beta <= 1e-12 * theta or k == n:
                stop = True
                break
            q[k] = w / beta
        y = s @ q[:k]
        ny = y.norm().item()
        if ny > 0:
            q[0] = y / ny
        if stop or used >= iters or not ny > 0:
            break
    return (theta + max(res, eps * theta)) ** 0.5, q[0].float()


def ntxent(z, label, tau):
    """lib/nn.c fl_ntxent_loss: clean-anchored NT-Xent (label < 0: faulted)."""
    B = z.shape[0]
    S = z @ z.t() / tau
    eye = torch.eye(B, dtype=torch.bool)
    same = (label[:, None] == label[None, :]) & ~eye & (label[:, None] >= 0)
    npos = same.sum(1)
    anchor = npos > 0
    if not anchor.any():
        return S.sum() * 0.0
    lse = torch.logsumexp(S.masked_fill(eye, float("-inf")), 1)
    pos = (S * same).sum(1) / npos.clamp_min(1)
    return (lse - pos)[anchor].sum() / anchor.sum()


class Trainer:
    """lib/train.c fl_train_step with fl_train_defaults' settings."""

    def __init__(self, net, stage, lr1=2e-3, lr2=1e-3, lr_dec2=1e-4, clip=1.0, tau=0.2,
                 w_contrast=0.5):
        self.net, self.stage, self.clip, self.tau, self.wc = net, stage, clip, tau, w_contrast
        groups = {m: [] for m in ("encoder", "decoder", "block", "head")}
        for name, kind, mod, g in net.layers:
            groups[mod] += [net.w(name), net.b(name)]
        self.groups = groups
        lr = {"encoder": lr1, "decoder": lr1 if stage == 1 else lr_dec2, "block": lr2, "head": lr2}
        self.order = ["encoder", "decoder"] if stage == 1 else ["block", "head", "decoder"]
        self.opt = {m: torch.optim.Adam(groups[m], lr=lr[m], eps=1e-8) for m in self.order}
        self.targets = net.spec["targets"]

    def step(self, xs, targets, label):
        net = self.net
        for p in net.parameters():
            p.grad = None
        if self.stage == 1:
            outs = net.decode(net.encode(xs))
        else:
            with torch.no_grad():
                z = net.encode(xs)
            outs = net.decode(net.block(z))
        loss = sum(F.mse_loss(o, t) for o, t in zip(outs, targets)) / len(outs)
        closs = torch.zeros(())
        total = loss
        if self.stage == 2 and self.wc > 0:
            closs = ntxent(net.head(z), label, self.tau)
            total = loss + self.wc * closs
        total.backward()
        for m in self.order:
            torch.nn.utils.clip_grad_norm_(self.groups[m], self.clip)
            self.opt[m].step()
            net.project(m, self.targets[m])
        return loss.item(), closs.item()


def load(path):
    """(net, spec, norm mean, norm std, clamp, tensors, meta) of a model file."""
    t, meta = read_safetensors(path)
    spec = json.loads(meta["faultline.spec"])
    det = json.loads(meta["faultline.detect"])
    net = Net(spec, t)
    return net, spec, t["norm.mean"], t["norm.std"], det.get("clamp", 10.0), t, meta


def normalise(spec, mean, std, clamp, raw):
    """lib/model.c fl_model_normalise on a batch: raw [(B, C, T)] per modality
    -> (standardised inputs, masks), float32 numpy."""
    xs, ms, off = [], [], 0
    W = spec["window"]
    for md, r in zip(spec["modalities"], raw):
        C, T = len(md["channels"]), W * md["rate"]
        mu = mean[off:off + C][None, :, None]
        inv = (np.float32(1.0) / std[off:off + C])[None, :, None]
        off += C
        mk = ~np.isnan(r)
        x = np.where(mk, (np.nan_to_num(r) - mu) * inv, 0).astype(np.float32)
        x = np.clip(x, -clamp, clamp).astype(np.float32)
        if md.get("drifts"):
            u = np.arange(T) - 0.5 * (T - 1)
            m = mk.astype(np.float64)
            n, st, sx = m.sum(2), (m * u).sum(2), (m * x).sum(2)
            stt, stx = (m * u * u).sum(2), (m * u * x).sum(2)
            den = n * stt - st * st
            slope = np.where((n > 1) & (den > 0), (n * stx - st * sx) / np.where(den > 0, den, 1), 0)
            icpt = np.where(n > 0, (sx - slope * st) / np.maximum(n, 1), 0)
            x = np.where(mk, x - (icpt[..., None] + slope[..., None] * u).astype(np.float32), x)
        xs.append(x.astype(np.float32))
        ms.append(mk.astype(np.float32))
    return xs, ms
