"""Binarized MLP and CNN builders for the ``model`` providers ``binary_mlp`` and ``binary_cnn``.

References: Hubara, Courbariaux et al., "Binarized Neural Networks", NeurIPS 2016 (binary weights
and ±1 activations, BN before sign, full-precision input layer; MNIST MLPs of 3x4096 reach 99.04%);
Rastegari et al., "XNOR-Net", ECCV 2016 (channel scales, first and last layers kept full precision).

Layout of ``binary_mlp`` with ``hidden = [h1, h2]``::

    [Flatten] -> Linear(in, h1) -> norm -> sign -> BinaryLinear(h1, h2) -> norm -> sign -> Linear(h2, out)

The first and last layers stay full precision (``fp_ends``), every hidden activation is ±1
(``binary_activations``), every other weight layer computes with ``alpha * sign(W)`` of its
latent real weights (``binary_weights``, ``weight_scale``). The STE (the backward surrogate of
every sign) is chosen by name; the gradient trainer then trains the latent weights with it, and
an evolution strategy searches the same latent weights through the binarized forward.
``binary_cnn`` is the same with conv blocks ``conv -> norm -> sign -> maxpool`` and one dense
output layer. Normalisation (``norm``): ``layer`` (default) is per sample (LayerNorm / GroupNorm
with one group), so train and test forwards agree and no buffers exist; ``batch`` normalises
with the statistics of the current batch ALWAYS (no running estimates: a population evaluation
carries no trained buffers), so it needs batches of more than one sample; ``none`` has none.
Weight layers have biases except before ``batch`` (where the mean subtraction cancels them). The
biases also matter for the sign: a binary layer's sums are integer multiples of alpha, so without
a real-valued offset many pre-activations tie exactly at the threshold, where the sign is decided
by float rounding (and differs between batched and looped evaluation); batch statistics over small
batches have that problem too.
Pure torch, no pluggy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from evoens.config import ConfigError, ModelConfig
from evoens.models import ACTIVATIONS
from evoens_binary.layers import WEIGHT_SCALES, BinaryActivation, BinaryConv2d, BinaryLinear
from evoens_binary.ops import ALIASES, STE, STES, ste

SCALE_ALIASES = {"xnor": "channel"}
NORMS = ("layer", "batch", "none")


@dataclass(frozen=True)
class BinaryOptions:
    """``model.options`` of the binary models, validated (see :func:`parse_options`)."""

    ste: str = "clipped"  # STE of every sign (activations, and weights unless weight_ste); "ste:NAME" too
    ste_params: dict[str, float] = field(default_factory=dict)  # e.g. {k = 2} for steep
    weight_ste: str | None = None  # a different STE for the weights (without parameters)
    weight_scale: str = "layer"  # none | layer | channel (= xnor)
    binary_weights: bool = True
    binary_activations: bool = True  # False: model.activation instead of sign
    norm: str = "layer"
    fp_ends: bool = True  # first and last weight layers full precision
    channels: tuple[int, ...] = (16, 32)  # binary_cnn only
    kernel: int = 3  # binary_cnn only

    def estimator(self) -> STE:
        return ste(self.ste, **self.ste_params)

    def weight_estimator(self) -> STE:
        return self.estimator() if self.weight_ste is None else ste(self.weight_ste)


_COMMON = ("ste", "ste_params", "weight_ste", "weight_scale", "binary_weights", "binary_activations", "norm", "fp_ends")
ALLOWED: dict[str, tuple[str, ...]] = {"binary_mlp": _COMMON, "binary_cnn": (*_COMMON, "channels", "kernel")}


def _fail(model: str, problem: str) -> ConfigError:
    stes = "|".join(STES)
    scales = "|".join([*WEIGHT_SCALES, *SCALE_ALIASES])
    help_ = (
        f"ste ({stes}; aliases {', '.join(sorted(ALIASES))}), ste_params (table, e.g. {{k = 2}}), "
        f"weight_ste, weight_scale ({scales}), "
        f"binary_weights (bool), binary_activations (bool), norm ({'|'.join(NORMS)}), fp_ends (bool)"
    )
    if model == "binary_cnn":
        help_ += ", channels (list of widths), kernel (odd int)"
    return ConfigError(f"model '{model}': {problem}; options: {help_}")


def _check_type(model: str, key: str, value: Any, ok: Callable[[Any], bool], what: str) -> None:
    if not ok(value):
        raise _fail(model, f"options.{key} = {value!r} must be {what}")


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_widths(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in v)


def _is_odd_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % 2 == 1


def parse_options(model: str, options: Mapping[str, Any]) -> BinaryOptions:
    """Validate ``model.options``; every mistake is one :class:`ConfigError` line listing the options."""
    unknown = sorted(set(options) - set(ALLOWED[model]))
    if unknown:
        raise _fail(model, f"unknown option(s) {', '.join(unknown)}")
    opts = dict(options)
    for key in ("binary_weights", "binary_activations", "fp_ends"):
        if key in opts:
            _check_type(model, key, opts[key], _is_bool, "true or false")
    for key in ("ste", "weight_ste"):
        if key in opts and isinstance(opts[key], str):
            opts[key] = opts[key].removeprefix("ste:")  # the grad_estimator provider's name works too
        if key in opts and (not isinstance(opts[key], str) or ALIASES.get(opts[key], opts[key]) not in STES):
            raise _fail(model, f"options.{key} = {options[key]!r} is not a known STE")
    if "ste_params" in opts:
        _check_type(model, "ste_params", opts["ste_params"], lambda v: isinstance(v, Mapping), "a table")
        opts["ste_params"] = dict(opts["ste_params"])
        for name, value in opts["ste_params"].items():
            _check_type(model, f"ste_params.{name}", value, _is_number, "a number")
    scale = opts.get("weight_scale", "layer")
    scale = SCALE_ALIASES.get(scale, scale) if isinstance(scale, str) else scale
    _check_type(model, "weight_scale", scale, lambda v: v in WEIGHT_SCALES, f"one of {', '.join(WEIGHT_SCALES)}")
    opts["weight_scale"] = scale
    if "norm" in opts:
        _check_type(model, "norm", opts["norm"], lambda v: v in NORMS, f"one of {', '.join(NORMS)}")
    if "channels" in opts:
        _check_type(model, "channels", opts["channels"], _is_widths, "a non-empty list of positive integers")
        opts["channels"] = tuple(opts["channels"])
    if "kernel" in opts:
        _check_type(model, "kernel", opts["kernel"], _is_odd_size, "an odd positive integer")
    parsed = BinaryOptions(**opts)
    try:  # STE parameters are checked by building the estimator once
        parsed.estimator()
    except ValueError as err:
        raise _fail(model, str(err)) from None
    return parsed


# ---------------------------------------------------------------------------------------------


def _norm1d(kind: str, width: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width, track_running_stats=False)
    return nn.Identity()


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # per sample over (C, H, W), a per-channel affine
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    return nn.Identity()


def _activation(opts: BinaryOptions, activation: str) -> nn.Module:
    return BinaryActivation(opts.estimator()) if opts.binary_activations else ACTIVATIONS[activation]()


def _linear(opts: BinaryOptions, fan_in: int, fan_out: int, *, full: bool, bias: bool) -> nn.Module:
    if full or not opts.binary_weights:
        return nn.Linear(fan_in, fan_out, bias=bias)
    return BinaryLinear(
        fan_in,
        fan_out,
        bias=bias,
        weight_scale=opts.weight_scale,  # type: ignore[arg-type]
        estimator=opts.estimator(),
        weight_ste=opts.weight_estimator(),
    )


def binary_mlp(
    input_shape: tuple[int, ...], num_outputs: int, hidden: list[int], opts: BinaryOptions, activation: str = "tanh"
) -> nn.Sequential:
    """``[Flatten] -> (Linear | BinaryLinear) -> norm -> sign`` per hidden width, then the output layer."""
    if not hidden:
        raise ConfigError("model 'binary_mlp': model.hidden is empty; give at least one hidden width, e.g. [256, 256]")
    widths = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(_linear(opts, fan_in, fan_out, full=i == 0 and opts.fp_ends, bias=opts.norm != "batch"))
        layers += [_norm1d(opts.norm, fan_out), _activation(opts, activation)]
    layers.append(_linear(opts, widths[-1], num_outputs, full=opts.fp_ends, bias=True))
    return nn.Sequential(*layers)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(C, H, W)`` as given, or a flat square ``(n,)`` read as one ``sqrt(n) x sqrt(n)`` channel."""
    if len(input_shape) == 3:
        return input_shape  # type: ignore[return-value]
    if len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        side = math.isqrt(input_shape[0])
        return (1, side, side)
    return None


def binary_cnn(
    input_shape: tuple[int, ...], num_outputs: int, opts: BinaryOptions, activation: str = "tanh"
) -> nn.Sequential:
    """``(conv | BinaryConv2d) -> norm -> sign -> maxpool2`` per channel width, then a dense output.

    A flat square input (the 8x8 ``digits`` come as ``(64,)``) is unflattened to one channel."""
    image = _image_shape(input_shape)
    if image is None:
        raise ConfigError(
            f"model 'binary_cnn': needs (C, H, W) inputs or a flat square (n,), got {tuple(input_shape)}; "
            "use binary_mlp for other inputs"
        )
    c, h, w = image
    layers: list[nn.Module] = [] if len(input_shape) == 3 else [nn.Unflatten(1, image)]
    k = opts.kernel
    for i, out in enumerate(opts.channels):
        if (i == 0 and opts.fp_ends) or not opts.binary_weights:
            conv: nn.Module = nn.Conv2d(c, out, k, padding=k // 2, bias=opts.norm != "batch")
        else:
            conv = BinaryConv2d(
                c,
                out,
                k,
                padding=k // 2,
                bias=opts.norm != "batch",
                weight_scale=opts.weight_scale,  # type: ignore[arg-type]
                estimator=opts.estimator(),
                weight_ste=opts.weight_estimator(),
            )
        layers += [conv, _norm2d(opts.norm, out), _activation(opts, activation), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(
                f"model 'binary_cnn': {len(opts.channels)} conv blocks pool a {image[1]}x{image[2]} input below 1x1; "
                "use fewer channels entries"
            )
    layers += [nn.Flatten(), _linear(opts, c * h * w, num_outputs, full=opts.fp_ends, bias=True)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# The provider factories: (input_shape, num_outputs, ModelConfig) -> nn.Module


def binary_mlp_model(input_shape: tuple[int, ...], num_outputs: int, cfg: ModelConfig) -> nn.Sequential:
    opts = parse_options("binary_mlp", cfg.options)
    return binary_mlp(input_shape, num_outputs, list(cfg.hidden), opts, cfg.activation)


def binary_cnn_model(input_shape: tuple[int, ...], num_outputs: int, cfg: ModelConfig) -> nn.Sequential:
    return binary_cnn(input_shape, num_outputs, parse_options("binary_cnn", cfg.options), cfg.activation)
