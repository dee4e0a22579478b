"""Shifted test sets that need no download: seeded, deterministic corruptions of an image split.

Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", arXiv:1906.02337 (2019) (the
corruption families); Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (five severities, shot noise and fog); Castro et al.,
"Morpho-MNIST", JMLR 2019 (stroke thickening and thinning); Recht, Roelofs, Schmidt, Shankar,
"Do CIFAR-10 Classifiers Generalize to CIFAR-10?", arXiv:1806.00451 (2018) (CIFAR-10.1, read from the
data directory by :func:`evoens.datasets.load_cifar10_1`).

Inputs are float images ``(N, C, H, W)`` or flat squares ``(N, S*S)`` (one channel, e.g. digits'
8x8), with values in ``value_range`` (every evoens dataset is ``[0, 1]``, background 0); outputs have
the input's shape, dtype, device and range. Severities 1..5 (0 = a copy of the input):

=============  ==========================================================  =============================
corruption     what                                                        parameter at severity 1..5
=============  ==========================================================  =============================
``rotate``     bilinear rotation about the centre, random sign, 0 fill      degrees 10, 20, 30, 40, 50
``translate``  bilinear shift in a random direction, 0 fill                 fraction of the side
                                                                           0.05, 0.10, 0.15, 0.20, 0.25
``shot_noise`` ``Poisson(lam * u) / lam`` on the image rescaled to [0, 1]   lam 60, 25, 12, 5, 3
``thicken``    grey dilation (max filter) with a disk of radius r pixels    r 1, 1.5, 2, 2.5, 3
``thin``       grey erosion (min filter) with the same disks                r 1, 1.5, 2, 2.5, 3
``fog``        ``(u + a f) / (1 + a)``, f a smooth random field in [0, 1]  a 0.2, 0.35, 0.5, 0.75, 1.0
               (three octaves of bilinear-upsampled uniform noise)
``blur``       Gaussian blur, replicate padding                             sigma 0.5, 0.75, 1, 1.25, 1.5 px
=============  ==========================================================  =============================

Determinism: the random draws of example ``i`` come from its own CPU generator seeded by a hash of
``(seed, start + i, corruption)`` (``start`` = the position of the batch's first example in the
split), so the output does not depend on how a split is chunked, nor on the device. The draws do
not depend on the severity, so severities of one seed differ only in strength.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from evoens.datasets import DataError, DataSplits, Split, load_cifar10_1, resolve_data_dir
from evoens.errors import did_you_mean

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "OODSpec",
    "blur",
    "corrupt",
    "fog_field",
    "image_shape",
    "morph",
    "ood_split",
    "parse_ood",
    "rotate",
    "shifted_split",
    "translate",
]

#: corruption -> its parameter at severities 1..5 (module docstring).
SEVERITIES: dict[str, tuple[float, ...]] = {
    "rotate": (10.0, 20.0, 30.0, 40.0, 50.0),
    "translate": (0.05, 0.10, 0.15, 0.20, 0.25),
    "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),
    "thicken": (1.0, 1.5, 2.0, 2.5, 3.0),
    "thin": (1.0, 1.5, 2.0, 2.5, 3.0),
    "fog": (0.2, 0.35, 0.5, 0.75, 1.0),
    "blur": (0.5, 0.75, 1.0, 1.25, 1.5),
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITIES)
_RANDOM = frozenset({"rotate", "translate", "shot_noise", "fog"})  # the others need no generators
_OCTAVES = ((2, 1.0), (4, 0.5), (8, 0.25))  # fog: (grid side, amplitude)
_MASK64 = (1 << 64) - 1


# --- determinism -------------------------------------------------------------------------------------


def _mix(z: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _generators(seed: int, start: int, n: int, name: str) -> list[torch.Generator]:
    """One CPU generator per example, seeded by hash(seed, start + i, name)."""
    base = _mix(_mix(seed & _MASK64) ^ zlib.crc32(name.encode()))
    return [torch.Generator().manual_seed(_mix(base ^ _mix(start + i))) for i in range(n)]


def _draw(gens: list[torch.Generator], draw: Callable[[torch.Generator], Tensor], device: torch.device) -> Tensor:
    return torch.stack([draw(g) for g in gens]).to(device)  # (N, ...)


# --- the corruptions, on u in [0, 1] of shape (N, C, H, W) ------------------------------------------


def _affine(u: Tensor, theta: Tensor) -> Tensor:
    """Bilinear resampling at ``theta @ (x, y, 1)`` (normalised coordinates), 0 outside."""
    grid = F.affine_grid(theta.to(u), list(u.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(u, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(u: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image by ``degrees`` (N,) about its centre (positive = counter-clockwise on screen)."""
    h, w = u.shape[-2:]
    t = torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(t), torch.sin(t)
    theta = torch.stack([torch.stack([cos, -sin * h / w, 0 * t], -1), torch.stack([sin * w / h, cos, 0 * t], -1)], 1)
    return _affine(u, theta)  # theta (N, 2, 3): pixel-space rotation, corrected for the aspect ratio


def translate(u: Tensor, shift: Tensor) -> Tensor:
    """Shift each image by ``shift`` (N, 2) = (dx, dy) pixels (right, down), 0 fill."""
    h, w = u.shape[-2:]
    n = u.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = -2 * shift[:, 0].double() / w, -2 * shift[:, 1].double() / h
    return _affine(u, theta)


def _disk(radius: float) -> list[tuple[int, int]]:
    r = int(math.floor(radius))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius**2 + 1e-9]


def morph(u: Tensor, radius: float, dilate: bool) -> Tensor:
    """Grey dilation (max) or erosion (min) with a disk; the border is neutral (never spreads in)."""
    r = int(math.floor(radius))
    h, w = u.shape[-2:]
    padded = F.pad(u, (r, r, r, r), value=-math.inf if dilate else math.inf)  # (N, C, H + 2r, W + 2r)
    out = u.clone()
    pick = torch.maximum if dilate else torch.minimum
    for dy, dx in _disk(radius):
        out = pick(out, padded[..., r + dy : r + dy + h, r + dx : r + dx + w])
    return out


def blur(u: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of std ``sigma`` pixels, radius ceil(3 sigma), replicate padding."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=u.dtype, device=u.device) / sigma) ** 2)
    k = k / k.sum()
    c = u.shape[1]
    out = F.conv2d(F.pad(u, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fog_field(gens: list[torch.Generator], h: int, w: int, device: torch.device) -> Tensor:
    """Smooth random fields in [0, 1], one per example: (N, 1, H, W)."""
    field = torch.zeros(len(gens), 1, h, w, device=device)
    for side, amplitude in _OCTAVES:
        coarse = _draw(gens, lambda g, s=side: torch.rand(1, s, s, generator=g), device)  # (N, 1, s, s)
        field += amplitude * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    lo, hi = field.amin((2, 3), keepdim=True), field.amax((2, 3), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-12)


def _apply(u: Tensor, name: str, p: float, gens: list[torch.Generator]) -> Tensor:
    """Corruption ``name`` at parameter ``p`` of u (N, C, H, W) in [0, 1]."""
    h, w = u.shape[-2:]
    if name == "rotate":
        sign = _draw(gens, lambda g: torch.randint(2, (), generator=g), u.device) * 2 - 1  # (N,)
        return rotate(u, p * sign.double())
    if name == "translate":
        angle = _draw(gens, lambda g: torch.rand((), generator=g, dtype=torch.float64), u.device) * 2 * math.pi
        d = p * min(h, w)
        return translate(u, torch.stack([d * torch.cos(angle), d * torch.sin(angle)], 1))
    if name == "shot_noise":
        rates = (u * p).cpu()
        return torch.stack([torch.poisson(rates[i], generator=g) for i, g in enumerate(gens)]).to(u.device) / p
    if name in ("thicken", "thin"):
        return morph(u, p, dilate=name == "thicken")
    if name == "fog":
        return (u + p * fog_field(gens, h, w, u.device).to(u.dtype)) / (1 + p)
    return blur(u, p)


# --- public entry points ------------------------------------------------------------------------------


def image_shape(x: Tensor) -> tuple[int, int, int]:
    """The (C, H, W) image shape of inputs x (N, ...): as given, or a flat square as one channel."""
    shape = tuple(x.shape[1:])
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if side and side * side == shape[0]:
        return (1, side, side)
    raise DataError(f"shift: inputs of shape {shape} are not images (C, H, W) nor flat squares (S*S,)")


def _check(name: str, severity: int) -> None:
    if name not in SEVERITIES:
        raise DataError(f"unknown corruption {name!r}{did_you_mean(name, SEVERITIES)}; known: {', '.join(SEVERITIES)}")
    if not (isinstance(severity, int) and 0 <= severity <= 5):
        raise DataError(f"corruption {name!r}: severity {severity!r} is not an integer in 0..5")


def corrupt(
    x: Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    *,
    start: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Corruption ``name`` at ``severity`` (0..5) of x (N, C, H, W) or (N, S*S); same shape and dtype.

    ``start`` is the index of ``x[0]`` in its split: pass it when corrupting a split in chunks.
    The corruption is computed in float32 on x's device.
    """
    _check(name, severity)
    if not x.is_floating_point():
        raise DataError(f"shift: inputs must be floating point, not {x.dtype}")
    if not value_range[0] < value_range[1]:
        raise DataError(f"shift: value_range {value_range!r} must be (low, high) with low < high")
    if severity == 0 or x.shape[0] == 0:
        return x.clone()
    lo, hi = value_range
    u = ((x.reshape(-1, *image_shape(x)) - lo) / (hi - lo)).float()  # (N, C, H, W) in [0, 1]
    gens = _generators(seed, start, u.shape[0], name) if name in _RANDOM else []
    out = _apply(u, name, SEVERITIES[name][severity - 1], gens).clamp_(0, 1)
    return (out * (hi - lo) + lo).to(x.dtype).reshape(x.shape)


def shifted_split(split: Split, corruption: str, severity: int, seed: int = 0, *, chunk: int = 4096) -> Split:
    """``split`` with its inputs corrupted (in chunks of ``chunk`` examples) and its labels unchanged."""
    _check(corruption, severity)
    parts = [corrupt(split.x[i : i + chunk], corruption, severity, seed, start=i) for i in range(0, len(split), chunk)]
    return Split(torch.cat(parts) if parts else split.x.clone(), split.y)


@dataclass(frozen=True)
class OODSpec:
    """A parsed OOD spec: a corruption with its severity, or CIFAR-10.1 with its version."""

    name: str
    severity: int = 0
    version: str = "v6"


def parse_ood(spec: str) -> OODSpec:
    """``"rotate:3"`` (corruption:severity 1..5), ``"cifar10_1"`` or ``"cifar10_1:v4"``."""
    name, _, arg = spec.strip().partition(":")
    if name in ("cifar10_1", "cifar10.1"):
        return OODSpec("cifar10_1", version=arg or "v6")
    if name not in SEVERITIES:
        known = ", ".join([*SEVERITIES, "cifar10_1"])
        raise DataError(f"ood {spec!r}: unknown shift {name!r}{did_you_mean(name, [*SEVERITIES, 'cifar10_1'])}; "
                        f"known: {known}")  # fmt: skip
    if not arg.isdigit() or not 1 <= int(arg) <= 5:
        raise DataError(f"ood {spec!r}: give the severity 1..5 explicitly, e.g. '{name}:3'")
    return OODSpec(name, int(arg))


def ood_split(
    data: DataSplits, spec: str, *, seed: int = 0, data_dir: str | Path | None = None, part: str = "test"
) -> Split:
    """The OOD split ``spec`` (see :func:`parse_ood`) for ``data``: its ``part`` split corrupted, or
    CIFAR-10.1's images from ``data_dir`` (resolved as usual; never downloaded)."""
    ood = parse_ood(spec)
    if part not in ("train", "val", "test"):
        raise DataError(f"ood {spec!r}: part {part!r} is not 'train', 'val' or 'test'")
    if ood.name != "cifar10_1":
        return shifted_split(getattr(data, part), ood.name, ood.severity, seed)
    if tuple(data.input_shape) != (3, 32, 32) or data.num_classes != 10:
        raise DataError(f"ood 'cifar10_1' needs a CIFAR-10-shaped dataset (3, 32, 32) with 10 classes, "
                        f"not {data.name!r} {tuple(data.input_shape)} with {data.num_classes}")  # fmt: skip
    folder = resolve_data_dir(data_dir)
    loaded = load_cifar10_1(folder, seed=seed, val_fraction=0.0, version=ood.version, download=False)
    return loaded.test.to(data.test.x.device)
