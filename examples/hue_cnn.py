"""A small two-class CNN trained on the spot, saved as TorchScript: a black box for explain.py and the photograph mode
of benchmarks/rex_vs_rexxai.py. `python examples/hue_cnn.py --out runs/photo_models/hue_cnn.pt` (about 2 minutes on
2 CPU cores, fixed seed), then `python explain.py --model runs/photo_models/hue_cnn.pt --img-size 128 ...`.

The task: procedural 128 px images, a low-saturation textured background with 2-6 opaque shapes (discs, boxes,
triangles) each either warm (hue 330-60 degrees: reds, oranges, yellows) or cool (hue 150-260 degrees: cyans,
blues); class 0 "warm" when the warm shapes cover more pixels than the cool ones (what stays visible after
overlaps), else class 1 "cool". The evidence is therefore local (the shapes, not the background), and every
shape counts by its area. The network (four strided 3x3 convolutions with batch norm, global average pooling, a
linear layer) takes images in [0, 1]; the saved file is a black box (no `mean` attribute: explain.py masks with
black).
"""
from __future__ import annotations

import argparse
import colorsys
import math
import time
from pathlib import Path

import torch
from torch import nn

CLASSES = ["warm", "cool"]


def _hsv(h: float, s: float, v: float) -> torch.Tensor:
    return torch.tensor(colorsys.hsv_to_rgb(h % 1.0, s, v))


def scene(size: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """One image (3, size, size) in [0, 1] and its label (0 warm, 1 cool)."""
    def u(a: float = 0.0, b: float = 1.0) -> float:
        return a + (b - a) * torch.rand((), generator=g).item()

    bg = _hsv(u(), u(0.0, 0.25), u(0.25, 0.85))
    img = bg.view(3, 1, 1) + 0.06 * torch.randn(3, size, size, generator=g)
    # a smooth low-frequency shading over the background
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = img + 0.15 * (u(-1, 1) * xx + u(-1, 1) * yy).unsqueeze(0)
    owner = torch.full((size, size), -1, dtype=torch.long)
    n = int(torch.randint(2, 7, (), generator=g))
    warm = []
    for k in range(n):
        is_warm = u() < 0.5
        hue = u(-30, 60) / 360 if is_warm else u(150, 260) / 360
        colour = _hsv(hue, u(0.55, 1.0), u(0.55, 1.0))
        cx, cy, r = u(0.1, 0.9), u(0.1, 0.9), u(0.06, 0.22)
        kind = int(torch.randint(0, 3, (), generator=g))
        x, y = (xx + 1) / 2, (yy + 1) / 2
        if kind == 0:
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        elif kind == 1:
            inside = ((x - cx).abs() <= r) & ((y - cy).abs() <= r * u(0.5, 1.5))
        else:
            a = u(0, 2 * math.pi)
            pts = [(cx + r * 1.3 * math.cos(a + j * 2 * math.pi / 3), cy + r * 1.3 * math.sin(a + j * 2 * math.pi / 3))
                   for j in range(3)]
            signs = []
            for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
                signs.append((x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0)
            inside = (signs[0] & signs[1] & signs[2]) | (~signs[0] & ~signs[1] & ~signs[2])
        shade = colour.view(3, 1, 1) * (1 + 0.05 * torch.randn(1, size, size, generator=g))
        img = torch.where(inside.unsqueeze(0), shade, img)
        owner[inside] = k
        warm.append(is_warm)
    warm_area = sum(int((owner == k).sum()) for k in range(n) if warm[k])
    cool_area = sum(int((owner == k).sum()) for k in range(n) if not warm[k])
    return img.clamp(0, 1), 0 if warm_area > cool_area else 1


def dataset(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pairs = [scene(size, g) for _ in range(n)]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


class HueCNN(nn.Module):
    def __init__(self, width: int = 24) -> None:
        super().__init__()
        layers, c = [], 3
        for w in (width, 2 * width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, len(CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images - 0.5).mean((2, 3)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/photo_models/hue_cnn.pt")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    x, y = dataset(args.n_train, args.size, args.seed)
    xt, yt = dataset(args.n_test, args.size, args.seed + 1)
    print(f"{args.n_train} training and {args.n_test} test images ({(y == 0).float().mean():.2f} warm) in "
          f"{time.perf_counter() - start:.0f} s")
    model = HueCNN()
    steps = args.epochs * (args.n_train // 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(args.n_train, generator=g)
        for i in range(args.n_train // 64):
            idx = order[i * 64:(i + 1) * 64]
            xb = x[idx]
            flip = torch.rand(len(xb), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    with torch.no_grad():
        acc = torch.cat([model(xt[i:i + 250]).argmax(1) for i in range(0, len(xt), 250)]).eq(yt).float().mean()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(out))
    print(f"test accuracy {acc:.3f} on {args.n_test} held-out images; saved {out} "
          f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
