"""Lowering for DomainTransform: the first-order recursion its four passes are made of, as ONNX `Loop`s.

Each pass of DeepLab's domain transform runs along one axis (here axis 2 of an (N, C, L, M) tensor; every
image, channel and line of the other axis is filtered at once):
- forward, i = 1 .. L-1:  out[i] = y[i] + e[i] * (out[i-1] - y[i])
- backward, i = L-2 .. 0: out[i] = y[i] + e[i+1] * (out[i+1] - y[i])
where e[i] (shape (N, 1 or C, L, M)) is the weight of the edge between i-1 and i, stored at the later pixel.
The step is sequential along its axis, so no elementwise operator expresses it and no converter lowers it.

Two forms compute the same float32 values (three roundings per step, difference, product and sum, as in
Caffe's CPU code):
- eager: a Python loop over the axis that updates slices of `y` in place (fast in PyTorch; `y` is consumed);
- traced: TorchScript functions whose `for` loop the tracer records as `prim::Loop`, which torch's exporter
  writes as an `onnx::Loop` whose trip count comes from the input's shape (each step's slice is collected in
  a sequence and the sequence is stacked once), so the exported model runs at any size.
`recursion` picks the traced form while torch traces (ONNX export), the eager form otherwise.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

AXIS = 2


def forward_recursion_eager(y: Tensor, e: Tensor) -> Tensor:
    """The forward pass along axis 2, in place on y (returned)."""
    lines, weights = y.unbind(AXIS), e.unbind(AXIS)
    step = torch.empty_like(lines[0])
    previous = lines[0]
    for i in range(1, len(lines)):
        current = lines[i]
        torch.sub(previous, current, out=step)
        step.mul_(weights[i])
        current.add_(step)
        previous = current
    return y


def backward_recursion_eager(y: Tensor, e: Tensor) -> Tensor:
    """The backward pass along axis 2, in place on y (returned)."""
    lines, weights = y.unbind(AXIS), e.unbind(AXIS)
    step = torch.empty_like(lines[0])
    previous = lines[-1]
    for i in range(len(lines) - 2, -1, -1):
        current = lines[i]
        torch.sub(previous, current, out=step)
        step.mul_(weights[i + 1])
        current.add_(step)
        previous = current
    return y


def _forward_recursion_traced(y: Tensor, e: Tensor) -> Tensor:
    previous = y.select(2, 0)
    steps = [previous]
    for i in range(1, y.shape[2]):
        current = y.select(2, i)
        previous = current + (previous - current) * e.select(2, i)
        steps.append(previous)
    return torch.stack(steps, 2)


def _backward_recursion_traced(y: Tensor, e: Tensor) -> Tensor:
    length = y.shape[2]
    previous = y.select(2, length - 1)
    steps = [previous]
    for k in range(1, length):
        i = length - 1 - k
        current = y.select(2, i)
        previous = current + (previous - current) * e.select(2, i + 1)
        steps.append(previous)
    return torch.flip(torch.stack(steps, 2), [2])  # collected from the last index down


@functools.cache
def _scripted(direction: str):
    """The TorchScript forms, compiled on first use (only an export needs them)."""
    return torch.jit.script(_forward_recursion_traced if direction == "forward" else _backward_recursion_traced)


def recursion(y: Tensor, e: Tensor, reverse: bool) -> Tensor:
    """One pass along axis 2 of y (N, C, L, M), with edge weights e (N, 1 or C, L, M). Eagerly it filters y in
    place, so the caller passes a tensor it owns; while tracing it returns a new tensor made by an onnx::Loop."""
    if torch.jit.is_tracing():
        return _scripted("backward" if reverse else "forward")(y, e)
    return (backward_recursion_eager if reverse else forward_recursion_eager)(y, e)
