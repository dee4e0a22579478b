"""Linear layers reused at every stage of a decode, with their weight gradient computed ONCE.

A decode of T stages uses the refiner's big weights (the output layer ``(K·D, H)``, the input
layer ``(H, D)``) T times. Autograd accumulates a full-size weight gradient per use: for the seed's
CNN that is T x 123 M floats written and re-read, memory traffic that dominates a meta-step on a
CPU. Here each use records its ``(input rows, output-gradient rows)`` during the backward pass and
the weight gradient is one matrix product over all stages' rows, ``dW = Σ_t δ_t^T x_t``, computed
when the backward pass reaches the weights (a :class:`_Token` node that every use depends on).
The numbers equal plain autograd up to float summation order (tested). First-order only (no
double backward). Pure torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["DeferredWeights"]


class DeferredWeights:
    """The weights ``(out, in)`` (and biases ``(out,)``) whose gradients are deferred, by name."""

    def __init__(self, weights: dict[str, tuple[Tensor, Tensor]]) -> None:
        self.names = list(weights)
        self.weights = weights  # name -> (weight (out, in), bias (out,))
        self.records: dict[tuple[str, int, int], tuple[list[Tensor], list[Tensor]]] = {}

    def token(self) -> Tensor:
        """A 0-d tensor every deferred use must take; its backward writes the weight gradients."""
        flat = [t for name in self.names for t in self.weights[name]]
        return _Token.apply(self, *flat)

    def linear(self, token: Tensor, name: str, x: Tensor, rows: slice | None = None) -> Tensor:
        """``x @ W[rows]^T + b[rows]`` for ``x`` (N, in): ``(N, len(rows))``, the weight gradient deferred."""
        weight, bias = self.weights[name]
        rows = rows or slice(0, weight.shape[0])
        return _Linear.apply(x, token, self, (name, rows.start, rows.stop), weight.detach()[rows], bias.detach()[rows])

    def record(self, key: tuple[str, int, int], x: Tensor, delta: Tensor) -> None:
        xs, ds = self.records.setdefault(key, ([], []))
        xs.append(x)
        ds.append(delta)

    def flush(self) -> list[Tensor | None]:
        """The weight and bias gradients of every name (None when unused), then forget the records."""
        grads: dict[str, list[Tensor | None]] = {name: [None, None] for name in self.names}
        for (name, start, stop), (xs, ds) in self.records.items():
            weight, bias = self.weights[name]
            if grads[name][0] is None:
                grads[name] = [torch.zeros_like(weight), torch.zeros_like(bias)]
            delta, x = torch.cat(ds), torch.cat(xs)  # (R, rows), (R, in) over every stage's use
            gw, gb = grads[name]
            assert gw is not None and gb is not None
            gw[start:stop].addmm_(delta.t(), x)  # (rows, in)
            gb[start:stop].add_(delta.sum(0))
        self.records = {}
        return [g for name in self.names for g in grads[name]]


class _Token(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, deferred: DeferredWeights, *weights: Tensor) -> Tensor:
        ctx.deferred = deferred
        ctx.set_materialize_grads(False)
        return weights[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Any, ...]:
        return (None, *ctx.deferred.flush())


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, token: Tensor, deferred: DeferredWeights, key: tuple[str, int, int],
                weight: Tensor, bias: Tensor) -> Tensor:  # fmt: skip
        ctx.save_for_backward(x)
        ctx.deferred, ctx.key, ctx.weight = deferred, key, weight
        return torch.addmm(bias, x, weight.t())  # (N, rows)

    @staticmethod
    def backward(ctx: Any, delta: Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        ctx.deferred.record(ctx.key, x, delta)
        grad_x = delta @ ctx.weight if ctx.needs_input_grad[0] else None  # (N, in)
        return grad_x, delta.new_zeros(()), None, None, None, None
