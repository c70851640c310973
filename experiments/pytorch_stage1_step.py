"""The stage-1 training step written in PyTorch, as the speed baseline for the JAX step.

Not part of the package: it needs only torch and numpy and runs in its own venv, made
by `experiments/benchmark_pytorch.sh` (which also writes the config JSON it reads):

  bash experiments/benchmark_pytorch.sh configs/fashion_mnist.py cpu=True

It computes what `mscad_jax.stage1.make_train_step` computes for the same config, on
random uint8 images: the augmentation (random resized crop with clipped boxes, flip,
brightness/contrast(/saturation/hue) jitter in a random order per image, grayscale, blur,
noise), the rotated copies, the ResNet encoder with the CIFAR stem and BatchNorm, one
cosine Hopfield memory and one projection head per scale, the memory NT-Xent both ways,
the instance NT-Xent, the variance hinge, the reconstruction of F_s with F_s held fixed,
the rotation head, and LARS with the same masks. Only the arithmetic's order and the
SAME padding of strided convolutions (torch pads symmetrically) differ. Times eager
mode on the CPU threads torch picks (its default: the physical cores).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAYOUTS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
NUM_ROTATIONS = 4


# ------------------------------------------------------------------------- model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity, as in the JAX model
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet(nn.Module):
    def __init__(self, depth: int, width: int, channels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.ModuleList()
        cin = width
        for stage, blocks in enumerate(LAYOUTS[depth]):
            cout = width * 2**stage
            layers = [BasicBlock(cin if b == 0 else cout, cout, 2 if stage > 0 and b == 0 else 1)
                      for b in range(blocks)]
            self.stages.append(nn.Sequential(*layers))
            cin = cout

    def forward(self, x):
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def l2_normalize(x, dim=-1):
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim, keepdim=True), min=1e-12))


class Head(nn.Module):
    def __init__(self, channels: int, out: int):
        super().__init__()
        self.dense1 = nn.Linear(channels, channels, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        self.dense2 = nn.Linear(channels, out)

    def forward(self, x):
        return self.dense2(F.relu(self.bn(self.dense1(x))))


class AnoMem(nn.Module):
    def __init__(self, m: dict, channels: int):
        super().__init__()
        self.scales, self.beta, self.deviation = tuple(m["scales"]), m["beta"], m["deviation"]
        self.encoder = ResNet(m["depth"], m["width"], channels)
        widths = {s: m["width"] * 2 ** (s - 1) for s in self.scales}
        self.slots = nn.ParameterDict({str(s): nn.Parameter(torch.randn(m["num_slots"], widths[s]))
                                       for s in self.scales})
        self.heads = nn.ModuleDict({str(s): Head(widths[s], m["proj_dim"]) for s in self.scales})
        self.rotation_head = nn.Linear(widths[max(self.scales)], NUM_ROTATIONS) if m["rotation_head"] else None

    def retrieve(self, features, s):
        """features [B, H, W, C] -> (retrieved [B, H, W, C], attention [B, H, W, N])."""
        slots = self.slots[str(s)]
        attention = torch.softmax(self.beta * l2_normalize(features) @ l2_normalize(slots).T, dim=-1)
        return attention @ slots, attention

    def deviation_map(self, features, retrieved):
        if self.deviation == "normalized":
            return l2_normalize(features) - l2_normalize(retrieved)
        return features - retrieved

    def forward(self, x, fixed_feature_retrieval: bool):
        maps = self.encoder(x)
        out = {}
        for s in self.scales:
            features = maps[s - 1].permute(0, 2, 3, 1)  # channels last, as the memory reads positions
            retrieved, attention = self.retrieve(features, s)
            o = {"features": features, "retrieved": retrieved}
            if fixed_feature_retrieval:
                o["retrieved_fixed"], _ = self.retrieve(features.detach(), s)
            o["u"] = self.heads[str(s)](features.mean(dim=(1, 2)))
            o["v"] = self.heads[str(s)](retrieved.mean(dim=(1, 2)))
            out[s] = o
        if self.rotation_head is not None:
            out["rotation_logits"] = self.rotation_head(out[max(self.scales)]["features"].mean(dim=(1, 2)))
        return out


# ------------------------------------------------------------------------ losses


def masked_mean(values, mask):
    return (values * mask).sum() / torch.clamp(mask.sum(), min=1.0)


def nt_xent(u, v, temperature, mask):
    b = u.shape[0]
    z = torch.cat([l2_normalize(u), l2_normalize(v)])
    sim = z @ z.T / temperature
    n = 2 * b
    idx = torch.arange(n)
    lse = torch.logsumexp(sim.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf), dim=-1)
    per_anchor = lse - sim[idx, (idx + b) % n]
    return masked_mean(per_anchor, torch.cat([mask, mask]).float())


def memory_variance(slots):
    z = math.sqrt(slots.shape[-1]) * l2_normalize(slots)
    return F.relu(1.0 - torch.sqrt(z.var(dim=0, unbiased=False) + 1e-4)).mean()


# ------------------------------------------------------------------ augmentation


def rgb_to_gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def rgb_to_hsv(x):
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    h = torch.where(r == maxc, bc - gc, torch.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h, s, maxc


def hsv_to_rgb(h, s, v):
    h6 = torch.remainder(h, 1.0) * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.long() % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [torch.zeros_like(v) for _ in range(3)]
    for i, rgb in enumerate(table):
        for c in range(3):
            out[c] = torch.where(sector == i, rgb[c], out[c])
    return torch.stack(out, dim=1)


def per_image(values, x):
    return values.view(-1, *([1] * (x.dim() - 1)))


def augment(x, a: dict, gen: torch.Generator):
    """A batch [N, C, H, W] in [0, 1], one independent draw per image."""
    n, c, h, w = x.shape
    uniform = lambda lo=0.0, hi=1.0: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    # Random resized crop, boxes clipped to the image, bilinear with half-pixel centres.
    area = uniform(a["crop_scale_min"], 1.0) * h * w
    aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    box_w = torch.clamp(torch.sqrt(area * aspect), 1.0, w)
    box_h = torch.clamp(torch.sqrt(area / aspect), 1.0, h)
    y0, x0 = uniform() * (h - box_h), uniform() * (w - box_w)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = box_w / w, box_h / h
    theta[:, 0, 2] = (2 * x0 + box_w) / w - 1
    theta[:, 1, 2] = (2 * y0 + box_h) / h - 1
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if a["flip"]:
        x = torch.where(per_image(torch.rand(n, generator=gen) < 0.5, x), x.flip(-1), x)
    strengths = a["jitter_strength"]
    if a["jitter_prob"] > 0 and any(strengths):
        bri, con, sat, hue = strengths
        factors = [uniform(max(0.0, 1 - bri), 1 + bri), uniform(max(0.0, 1 - con), 1 + con),
                   uniform(max(0.0, 1 - sat), 1 + sat), uniform(-hue, hue)]

        def contrast(y):
            mean = (y if c == 1 else rgb_to_gray(y)).mean(dim=(1, 2, 3), keepdim=True)
            return (mean + per_image(factors[1], y) * (y - mean)).clamp(0, 1)

        def saturation(y):
            gray = rgb_to_gray(y)
            return (gray + per_image(factors[2], y) * (y - gray)).clamp(0, 1)

        def hue_shift(y):
            hh, ss, vv = rgb_to_hsv(y)
            return hsv_to_rgb(hh + per_image(factors[3], hh), ss, vv).clamp(0, 1)

        ops = [lambda y: (y * per_image(factors[0], y)).clamp(0, 1), contrast]
        if c == 3:
            ops += [saturation, hue_shift]
        # A random order per image: every op runs at every position, the image keeps its own.
        order = torch.argsort(torch.rand(n, len(ops), generator=gen), dim=1)
        jittered = x
        for position in range(len(ops)):
            for i, op in enumerate(ops):
                jittered = torch.where(per_image(order[:, position] == i, x), op(jittered), jittered)
        x = torch.where(per_image(torch.rand(n, generator=gen) < a["jitter_prob"], x), jittered, x)
    if c == 3 and a["grayscale_prob"] > 0:
        x = torch.where(per_image(torch.rand(n, generator=gen) < a["grayscale_prob"], x),
                        rgb_to_gray(x).expand_as(x), x)
    if a["blur_prob"] > 0:
        radius = max(1, int(0.05 * min(h, w)))
        sigma = uniform(*a["blur_sigma"]).clamp(min=1e-3)
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0)[None] / sigma[:, None]) ** 2)
        taps = taps / taps.sum(dim=1, keepdim=True)  # [N, K]
        rows = F.pad(x, (0, 0, radius, radius), mode="replicate")
        y = sum(per_image(taps[:, i], x) * rows[:, :, i:i + h] for i in range(2 * radius + 1))
        cols = F.pad(y, (radius, radius, 0, 0), mode="replicate")
        y = sum(per_image(taps[:, i], x) * cols[..., i:i + w] for i in range(2 * radius + 1))
        x = torch.where(per_image(torch.rand(n, generator=gen) < a["blur_prob"], x), y, x)
    if a["noise_std"] > 0:
        x = (x + per_image(uniform(0, a["noise_std"]), x) * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    return x.clamp(0, 1)


# -------------------------------------------------------------------------- step


class Lars:
    """optax.lars: decayed weights, trust ratio (coefficient 0.001), learning rate, momentum;
    BN parameters, biases and memory slots excluded from decay and trust ratio."""

    def __init__(self, model: nn.Module, s1: dict, schedule_peak: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Conv and dense kernels are the >1-d weights other than the memory slots.
        slot_ids = {id(p) for p in model.slots.values()}
        self.adapt = [p.dim() > 1 and id(p) not in slot_ids for p in self.params]
        self.momentum = [torch.zeros_like(p) for p in self.params]
        self.wd, self.beta, self.lr = s1["weight_decay"], s1["momentum"], schedule_peak

    @torch.no_grad()
    def step(self):
        for p, m, adapt in zip(self.params, self.momentum, self.adapt):
            g = p.grad
            if adapt:
                g = g + self.wd * p
                p_norm, g_norm = p.norm(), g.norm()
                ratio = torch.where((p_norm > 0) & (g_norm > 0), p_norm / g_norm, torch.ones_like(p_norm))
                g = 0.001 * ratio * g
            m.mul_(self.beta).add_(g, alpha=-self.lr)
            p.add_(m)


def train_step(model, opt, images_uint8, config, gen):
    s1, m = config["stage1"], config["model"]
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    rotations = NUM_ROTATIONS if s1["rotations"] else 1

    def view():
        v = augment(x, s1["augment"], gen)
        return torch.cat([torch.rot90(v, r, dims=(2, 3)) for r in range(rotations)])

    views = torch.cat([view(), view()]).contiguous(memory_format=torch.channels_last)
    rotation = torch.arange(rotations).repeat_interleave(x.shape[0])
    normal = torch.ones(len(rotation), dtype=torch.bool)  # no labelled anomalies in the benchmark
    anchor = normal & (rotation == 0)
    reconstruction_weight = s1["reconstruction_weight"]
    out = model(views, fixed_feature_retrieval=bool(reconstruction_weight))
    weights = s1["scale_weights"] or [1.0] * len(m["scales"])
    total = 0.0
    for s, weight in zip(m["scales"], weights):
        o = out[s]
        u1, u2 = o["u"].chunk(2)
        m1, m2 = o["v"].chunk(2)
        contrastive = 0.5 * (nt_xent(u1, m2, s1["temperature"], anchor) + nt_xent(u2, m1, s1["temperature"], anchor))
        instance = nt_xent(u1, u2, s1["temperature"], normal) if s1["instance_weight"] else 0.0
        total = total + weight * (s1["memory_weight"] * contrastive + s1["instance_weight"] * instance)
        total = total + s1["variance_weight"] * memory_variance(model.slots[str(s)])
        if reconstruction_weight:
            d = model.deviation_map(o["features"].detach(), o["retrieved_fixed"])
            per_row = (d * d).sum(-1).mean(dim=(1, 2))
            total = total + reconstruction_weight * masked_mean(per_row, torch.cat([anchor, anchor]).float())
    if model.rotation_head is not None and s1["rotations"]:
        total = total + s1["rotation_weight"] * F.cross_entropy(out["rotation_logits"], torch.cat([rotation, rotation]))
    for p in opt.params:
        p.grad = None
    total.backward()
    opt.step()
    return total.detach()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_json", required=True, help="The config as JSON (ConfigDict.to_json()).")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps after two warm-up steps.")
    parser.add_argument("--channels", type=int, required=True, help="Image channels of the config's dataset.")
    args = parser.parse_args()
    with open(args.config_json) as f:
        config = json.load(f)
    torch.manual_seed(config["seed"])
    gen = torch.Generator().manual_seed(config["seed"])
    model = AnoMem(config["model"], args.channels).to(memory_format=torch.channels_last)
    model.train()
    s1 = config["stage1"]
    opt = Lars(model, s1, s1["base_learning_rate"] * s1["batch_size"] / 256)
    size, batch = config["image_size"], s1["batch_size"]
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, args.channels),
                                                                dtype=np.uint8))
    for _ in range(2):
        train_step(model, opt, images, config, gen)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(model, opt, images, config, gen)
    seconds = (time.perf_counter() - start) / args.steps
    if not torch.isfinite(loss):
        raise SystemExit(f"loss is not finite: {loss}")
    print(json.dumps({"framework": f"pytorch {torch.__version__}", "threads": torch.get_num_threads(),
                      "images/s": batch / seconds, "steps/s": 1 / seconds, "loss": float(loss)}))


if __name__ == "__main__":
    main()
