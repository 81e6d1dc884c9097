"""RNN, LSTM and LSTMUnit, computed as the net Caffe's RecurrentLayer unrolls over the T timesteps of its input.

Bottoms: x (T, N, ...), cont (T, N) (0 starts a new sequence: the previous hidden state is multiplied by it), an
optional static input x_static (N, ...) added at every timestep, and with `expose_hidden` the initial states
(h_0; LSTM: h_0, c_0), each (1, N, num_output). Tops: the per-timestep output (T, N, num_output) and with
`expose_hidden` the final states. Blobs in Caffe's order (the unrolled net's parameters, first use first):
LSTM W_xc (4H, X), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H); RNN W_xh (H, X), b_h (H), [W_xh_static (H, S)],
W_hh (H, H), W_ho (H, H), b_o (H). The LSTM gates are (i, f, o, g) in that order.

Without `expose_hidden`, Caffe starts each forward pass from the final state of the previous one (zeros the first
time); caffe2torch computes every pass as Caffe's first, which is the same whenever cont is 0 at t = 0 (the
usual start of a sequence). T is fixed when Caffe sets the layer up: a net with these layers runs, and exports,
at its declared input size only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, count, register, shape_text


def caffe_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """LSTMUnitLayer's sigmoid: 1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + torch.exp(-x))


def caffe_tanh(x: torch.Tensor) -> torch.Tensor:
    """LSTMUnitLayer's tanh: 2 * sigmoid(2x) - 1."""
    return 2.0 * caffe_sigmoid(2.0 * x) - 1.0


def lstm_unit(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LSTMUnitLayer::Forward_cpu: gates (..., 4D) = (i, f, o, g); f is 0 where cont is 0, else cont * sigmoid;
    c = f * c_prev + i * g, h = o * tanh(c). `cont` broadcasts over the last axis."""
    hidden = c_prev.shape[-1]
    i, f, o, g = (gates.narrow(-1, k * hidden, hidden) for k in range(4))
    cont = cont.unsqueeze(-1)
    forget = torch.where(cont == 0, torch.zeros_like(f), cont * caffe_sigmoid(f))
    c = forget * c_prev + caffe_sigmoid(i) * caffe_tanh(g)
    return c, caffe_sigmoid(o) * caffe_tanh(c)


@register("LSTMUnit")
class LSTMUnitConverter(LayerConverter):
    """LSTMUnitLayer: bottoms c_prev (1, N, D), gate inputs (1, N, 4D), cont (1, N); tops c and h (1, N, D)."""

    bottom_counts = (3, 3)
    top_counts = (2, 2)

    def output_shapes(self, spec, bottoms, ctx):
        c_prev, gates, cont = bottoms
        if len(c_prev) != 3 or len(gates) != 3 or len(cont) != 2:
            raise ValueError(f"LSTMUnit needs bottoms of 3, 3 and 2 axes, not {shape_text(c_prev)}, "
                             f"{shape_text(gates)} and {shape_text(cont)}")
        for shape in bottoms:
            if shape[0] not in (1, None):
                raise ValueError(f"LSTMUnit works on one timestep: every bottom's first axis must be 1, not "
                                 f"{shape_text(shape)}")
            if shape[1] is not None and c_prev[1] is not None and shape[1] != c_prev[1]:
                raise ValueError(f"LSTMUnit's bottoms must have the same number of streams: {shape_text(c_prev)}, "
                                 f"{shape_text(gates)}, {shape_text(cont)}")
        if c_prev[2] is not None and gates[2] is not None and gates[2] != 4 * c_prev[2]:
            raise ValueError(f"LSTMUnit's gate inputs must have 4 x {c_prev[2]} values, not {gates[2]}")
        return [c_prev, c_prev]

    def build(self, spec, bottoms, ctx):
        return CaffeLSTMUnit()


class CaffeLSTMUnit(CaffeLayer):
    def forward(self, c_prev, gates, cont):
        return lstm_unit(c_prev, gates, cont)


class _RecurrentConverter(LayerConverter):
    """RecurrentLayer's bottom/top rules; `states` is the number of hidden state blobs (RNN 1, LSTM 2)."""

    states: int = 1
    fixes_input_size = True
    # The widest envelope (LSTM with exposed states and a static input); counts() gives each layer's own.
    bottom_counts = (2, 5)
    top_counts = (1, 3)

    def _param(self, spec):
        p = spec.param("recurrent_param")
        return int(p.get("num_output", 0)), bool(p.get("expose_hidden", False))

    def counts(self, spec):
        _, expose = self._param(spec)
        low = 2 + (self.states if expose else 0)
        return (low, low + 1), (1 + (self.states if expose else 0),) * 2

    def validate(self, spec, ctx):
        return [] if self._param(spec)[0] >= 1 else ["recurrent_param needs num_output > 0"]

    def has_static(self, spec) -> bool:
        _, expose = self._param(spec)
        return len(spec.bottoms) > 2 + (self.states if expose else 0)

    def gates(self) -> int:
        return 1

    def output_shapes(self, spec, bottoms, ctx):
        hidden, expose = self._param(spec)
        x, cont = bottoms[0], bottoms[1]
        if len(x) < 3:
            raise ValueError(f"{spec.type}'s input must be (T, N, ...) with at least 3 axes (its input transform is "
                             f"an InnerProduct from axis 2), not {shape_text(x)}")
        if len(cont) != 2 or any(a is not None and b is not None and a != b for a, b in zip(cont, x[:2])):
            raise ValueError(f"{spec.type}'s second bottom (cont) must be (T, N) = ({x[0]}, {x[1]}), not "
                             f"{shape_text(cont)}")
        if self.has_static(spec):
            static = bottoms[2]
            if len(static) < 2 or (static[0] is not None and x[1] is not None and static[0] != x[1]):
                raise ValueError(f"{spec.type}'s static input must be (N, ...) with N = {x[1]} and at least 2 axes, "
                                 f"not {shape_text(static)}")
        state = (1, x[1], hidden)
        if expose:
            for shape in bottoms[len(bottoms) - self.states:]:
                if tuple(shape) != state and None not in shape and None not in state:
                    raise ValueError(f"{spec.type}'s initial state bottoms must be {shape_text(state)}, not "
                                     f"{shape_text(shape)}")
        return [(x[0], x[1], hidden)] + ([state] * self.states if expose else [])

    def input_blob_shapes(self, spec, bottoms) -> list:
        hidden, _ = self._param(spec)
        width = self.gates() * hidden
        shapes = [(width, count(bottoms[0][2:])), (width,)]
        if self.has_static(spec):
            shapes.append((width, count(bottoms[2][1:])))
        return shapes


@register("LSTM")
class LSTMConverter(_RecurrentConverter):
    states = 2

    def gates(self) -> int:
        return 4

    def blob_shapes(self, spec, bottoms):
        hidden, _ = self._param(spec)
        return self.input_blob_shapes(spec, bottoms) + [(4 * hidden, hidden)]

    def build(self, spec, bottoms, ctx):
        hidden, expose = self._param(spec)
        shapes = self.blob_shapes(spec, bottoms)
        return CaffeLSTM(hidden, shapes, self.has_static(spec), expose)


@register("RNN")
class RNNConverter(_RecurrentConverter):
    states = 1

    def blob_shapes(self, spec, bottoms):
        hidden, _ = self._param(spec)
        return self.input_blob_shapes(spec, bottoms) + [(hidden, hidden), (hidden, hidden), (hidden,)]

    def build(self, spec, bottoms, ctx):
        hidden, expose = self._param(spec)
        return CaffeRNN(hidden, self.blob_shapes(spec, bottoms), self.has_static(spec), expose)


class _CaffeRecurrent(CaffeLayer):
    names: tuple[str, ...] = ()

    def __init__(self, hidden: int, shapes: list, static: bool, expose: bool):
        super().__init__()
        self.hidden, self.static, self.expose = hidden, static, expose
        names = [n for n in self.names if static or not n.endswith("_static")]
        for name, shape in zip(names, shapes):
            if None in shape:
                raise ValueError(f"the shape of {name} ({shape_text(shape)}) depends on an unknown input shape")
            setattr(self, name, nn.Parameter(torch.zeros(shape)))
        self.blob_names = tuple(names)

    def _inputs(self, xs):
        x, cont = xs[0], xs[1]
        rest = list(xs[2:])
        static = rest.pop(0) if self.static else None
        return x, cont, static, rest

    def _input_terms(self, x, static, weight, bias, static_weight):
        """W x_t + b for every timestep (InnerProduct from axis 2), and W_static x_static as (1, N, width)."""
        projected = F.linear(x.flatten(2), weight, bias)
        extra = None
        if static is not None:
            extra = F.linear(static.flatten(1), static_weight).unsqueeze(0)
        return projected, extra


class CaffeLSTM(_CaffeRecurrent):
    names = ("W_xc", "b_c", "W_xc_static", "W_hc")

    def forward(self, *xs):
        x, cont, static, states = self._inputs(xs)
        steps, streams = x.shape[0], x.shape[1]
        projected, extra = self._input_terms(x, static, self.W_xc, self.b_c,
                                             self.W_xc_static if self.static else None)
        if self.expose:
            h, c = states
        else:
            h = c = x.new_zeros((1, streams, self.hidden))
        outputs = []
        for t in range(int(steps)):
            cont_t = cont[t : t + 1]
            h_conted = h * cont_t.unsqueeze(-1)  # Scale with axis 0: cont_t (1, N) over h (1, N, H)
            gates = F.linear(h_conted, self.W_hc) + projected[t : t + 1]
            if extra is not None:
                gates = gates + extra
            c, h = lstm_unit(c, gates, cont_t)
            outputs.append(h)
        out = torch.cat(outputs, dim=0)
        return (out, h, c) if self.expose else out

    def extra_repr(self) -> str:
        return f"num_output={self.hidden}, static={self.static}, expose_hidden={self.expose}"


class CaffeRNN(_CaffeRecurrent):
    names = ("W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o")

    def forward(self, *xs):
        x, cont, static, states = self._inputs(xs)
        streams = x.shape[1]
        projected, extra = self._input_terms(x, static, self.W_xh, self.b_h,
                                             self.W_xh_static if self.static else None)
        h = states[0] if self.expose else x.new_zeros((1, streams, self.hidden))
        outputs = []
        for t in range(int(x.shape[0])):
            h_conted = h * cont[t : t + 1].unsqueeze(-1)
            pre = F.linear(h_conted, self.W_hh) + projected[t : t + 1]
            if extra is not None:
                pre = pre + extra
            h = torch.tanh(pre)
            outputs.append(torch.tanh(F.linear(h, self.W_ho, self.b_o)))
        out = torch.cat(outputs, dim=0)
        return (out, h) if self.expose else out

    def extra_repr(self) -> str:
        return f"num_output={self.hidden}, static={self.static}, expose_hidden={self.expose}"

