"""Gradient-flow diagnostics: per-layer gradient norms, update sizes and saturated or dead units.

:class:`GradientFlowRecorder` holds the whole of ``gpubp.callbacks.GradientMonitor``
(which adds only the :class:`~gpubp.callbacks.Callback` base). Every ``every``
steps it records, per Dense layer (the layers with weights; "layer k" is the
k-th of them):

- ``grad_norm``: ``||dL/dW||``, the weight gradient as the optimizer receives it
  (after the all-reduce of data-parallel training, before clipping);
- ``update_ratio``: ``||ΔW|| / ||W||``, the step's update against the weights before it
  (``weight_norm``: ``||W||``);
- ``saturated``: for sigmoid and tanh layers, the fraction of outputs within
  ``saturation`` of an asymptote (as a fraction of the activation's range:
  sigmoid below 0.02 or above 0.98 by default), where the derivative is
  nearly 0;
- ``dead``: for ReLU layers, the fraction of units that output 0 for every
  row of the batch (they receive no gradient).

The numbers are computed on the device with the backend's array module and
read to the host in one transfer per record. A recorded step runs eagerly
(not as a captured CUDA graph, so the monitor's own array code can run in its
gradient hook); the steps in between run as before. The activations are those
of the recorded step's batch through the updated weights (one extra forward
pass per record).

It warns once per problem and layer (:class:`GradientFlowWarning`), in plain
words with a remedy, and keeps its findings in :attr:`findings`:

- vanishing gradients: a layer's gradient norm is below ``vanishing`` times the
  last layer's;
- exploding gradients: a layer's gradient norm is not finite, above
  ``max_grad_norm``, above ``exploding`` times the last layer's, or has grown
  ``exploding`` times since the layer's first record;
- large updates: ``||ΔW|| / ||W||`` above ``max_update_ratio``;
- saturated units: more than ``max_saturated`` of a sigmoid/tanh layer's outputs
  saturated;
- dead ReLUs: more than ``max_dead`` of a ReLU layer's units dead.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .errors import InvalidInputError

#: The recorded quantities, each a list per layer in :attr:`GradientFlowRecorder.history`.
RECORDS = ("grad_norm", "weight_norm", "update_ratio", "saturated", "dead")
#: The range of each bounded activation, for ``saturated``.
BOUNDED = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


class GradientFlowWarning(UserWarning):
    """A gradient-flow problem the monitor found (vanishing or exploding gradients, saturated or dead units)."""


def _check_fraction(name, value, upper=1.0):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < upper:
        raise InvalidInputError(f"{name} must be a number in (0, {upper:g}), got {value!r}")
    return float(value)


class GradientFlowRecorder:
    """Records and judges the gradient flow every ``every`` steps of ``fit`` (see the module's doc).

    Parameters
    ----------
    every : int
        Record the step whose optimizer step count is a multiple of this (step 0 included).
    vanishing : float
        A layer whose weight-gradient norm is below this fraction of the last layer's has vanishing
        gradients (default 1e-3: three orders of magnitude).
    exploding : float
        A layer whose weight-gradient norm is above this multiple of the last layer's, or of its own first
        record, has exploding gradients (default 1e3).
    max_grad_norm : float
        A layer whose weight-gradient norm is above this has exploding gradients (default 1e3).
    max_update_ratio : float
        Warn when a step changes a layer's weights by more than this fraction of their norm (default 0.25).
    saturation : float
        A sigmoid/tanh output within this fraction of the activation's range from an asymptote is
        saturated (default 0.02).
    max_saturated, max_dead : float
        Warn when more than this fraction of a layer's outputs are saturated (default 0.5), or of its ReLU
        units are dead (default 0.5).
    warn : bool
        Issue each finding as a Python warning (:class:`GradientFlowWarning`); it is kept in
        :attr:`findings` either way.

    Attributes
    ----------
    history : dict
        ``"step"``: the optimizer step of each record; ``"grad_norm"``, ``"weight_norm"``,
        ``"update_ratio"``, ``"saturated"``, ``"dead"``: one list per layer (input first) with a value per
        record (NaN where it does not apply, e.g. ``dead`` of a sigmoid layer).
    findings : list of str
        The warnings issued, each once.
    """

    def __init__(self, every=50, vanishing=1e-3, exploding=1e3, max_grad_norm=1e3, max_update_ratio=0.25,
                 saturation=0.02, max_saturated=0.5, max_dead=0.5, warn=True):
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise InvalidInputError(f"every must be an integer >= 1, got {every!r}")
        self.every = int(every)
        self.vanishing = _check_fraction("vanishing", vanishing)
        if isinstance(exploding, bool) or not isinstance(exploding, numbers.Real) or not 1 < exploding < math.inf:
            raise InvalidInputError(f"exploding must be a finite number > 1, got {exploding!r}")
        self.exploding = float(exploding)
        if (isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real)
                or not 0 < max_grad_norm < math.inf):
            raise InvalidInputError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
        self.max_grad_norm = float(max_grad_norm)
        if (isinstance(max_update_ratio, bool) or not isinstance(max_update_ratio, numbers.Real)
                or not 0 < max_update_ratio < math.inf):
            raise InvalidInputError(f"max_update_ratio must be a finite number > 0, got {max_update_ratio!r}")
        self.max_update_ratio = float(max_update_ratio)
        self.saturation = _check_fraction("saturation", saturation, 0.5)
        self.max_saturated = _check_fraction("max_saturated", max_saturated)
        self.max_dead = _check_fraction("max_dead", max_dead)
        if not isinstance(warn, (bool, np.bool_)):
            raise InvalidInputError(f"warn must be True or False, got {warn!r}")
        self.warn = bool(warn)
        self.history = {"step": []}
        self.findings = []
        self._found = set()  # (problem, layer) pairs already reported
        self._recording = False
        self._grad_norms = None
        self._hook_name = f"gradient_monitor_{id(self)}"

    # ------------------------------------------------------------ callback hooks
    def on_train_begin(self, logs=None):
        model = self.model
        model.require_compiled()
        layers = model.dense_layers  # the layers with weights (a Dropout layer has none)
        self._dense = [any(layer is dense for dense in layers) for layer in model.layers]
        self.activations = [layer.activation for layer in layers]
        self.inits = [layer.init if isinstance(layer.init, str) else "a custom initialiser" for layer in layers]
        if not self.history["step"]:
            for key in RECORDS:
                self.history[key] = [[] for _ in layers]
        self._weight_ranges = model.param_ranges[0::2]
        self._before = None
        self._recording, self._grad_norms = False, None
        model.optimizer.remove_gradient_hook(self._hook_name)  # a run stopped before on_train_end left it
        model.optimizer.add_gradient_hook(self._hook_name, self._record_gradient)

    def on_batch_begin(self, batch, logs=None):
        model = self.model
        self._recording = model.optimizer.iterations % self.every == 0
        if not self._recording:
            return
        self._graphs, model.cuda_graphs = model.cuda_graphs, False  # this step runs eagerly
        n_weights = self._weight_ranges[-1][1]
        if self._before is None:
            self._before = model.params[:n_weights].copy()
        else:
            model.backend.xp.copyto(self._before, model.params[:n_weights])
        self._step = model.optimizer.iterations

    def _record_gradient(self, kernels, g):
        """The gradient hook: on a recorded step, each layer's ||dL/dW|| on the device (float64)."""
        if self._recording:
            xp = self.model.backend.xp
            self._grad_norms = xp.stack([xp.sqrt(xp.sum(xp.square(g[a:b], dtype=np.float64)))
                                         for a, b in self._weight_ranges])

    def on_batch_end(self, batch, logs=None):
        if not self._recording:
            return
        model = self.model
        model.cuda_graphs = self._graphs
        self._recording = False
        if self._grad_norms is None:  # the step ran without the optimizer's gradient hooks
            return
        xp = model.backend.xp
        weights, before = model.params, self._before
        weight_norms, update_norms, units = [], [], []
        outputs = [y for y, dense in zip(model.layer_outputs(), self._dense) if dense]
        for (a, b), activation, y in zip(self._weight_ranges, self.activations, outputs):
            w = before[a:b]
            weight_norms.append(xp.sqrt(xp.sum(xp.square(w, dtype=np.float64))))
            update_norms.append(xp.sqrt(xp.sum(xp.square(weights[a:b] - w, dtype=np.float64))))
            units.append(self._unit_fraction(xp, activation, y))
        stats = xp.concatenate([self._grad_norms, xp.stack(weight_norms), xp.stack(update_norms),
                                xp.stack(units)])
        host = np.asarray(model.backend.to_host(stats), dtype=np.float64).reshape(4, -1)  # the one host read
        self._grad_norms = None
        self._add_record(self._step, *host)

    def on_train_end(self, logs=None):
        model = self.model
        if self._recording:  # training stopped inside a recorded step
            model.cuda_graphs = self._graphs
            self._recording = False
        model.optimizer.remove_gradient_hook(self._hook_name)
        self._before = self._grad_norms = None

    # ------------------------------------------------------------------- records
    def _unit_fraction(self, xp, activation, y):
        """Saturated fraction of a sigmoid/tanh output, dead fraction of ReLU units, else NaN (device)."""
        if activation in BOUNDED:
            low, high = BOUNDED[activation]
            margin = self.saturation * (high - low)
            return xp.mean(((y < low + margin) | (y > high - margin)).astype(np.float64))
        if activation == "relu":
            return xp.mean((y.max(axis=0) <= 0).astype(np.float64))
        return xp.asarray(np.nan, dtype=np.float64)

    def _add_record(self, step, grad_norms, weight_norms, update_norms, units):
        history = self.history
        history["step"].append(int(step))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(weight_norms > 0, update_norms / weight_norms, np.nan)
        for layer, activation in enumerate(self.activations):
            history["grad_norm"][layer].append(float(grad_norms[layer]))
            history["weight_norm"][layer].append(float(weight_norms[layer]))
            history["update_ratio"][layer].append(float(ratios[layer]))
            history["saturated"][layer].append(float(units[layer]) if activation in BOUNDED else math.nan)
            history["dead"][layer].append(float(units[layer]) if activation == "relu" else math.nan)
        self._judge(len(history["step"]) - 1)

    def _judge(self, record):
        """Check record ``record`` for each problem; report the (problem, layer) pairs not reported before."""
        h, step, last = self.history, self.history["step"][record], len(self.activations) - 1
        grad = [h["grad_norm"][layer][record] for layer in range(last + 1)]
        first = [h["grad_norm"][layer][0] for layer in range(last + 1)]
        found = {"vanishing": [], "exploding": [], "updates": [], "saturated": [], "dead": []}
        for layer in range(last + 1):
            g = grad[layer]
            if not math.isfinite(g):
                found["exploding"].append((layer, f"not finite ({g})"))
            elif g > self.max_grad_norm:
                found["exploding"].append((layer, f"{g:.2g}, above {self.max_grad_norm:g}"))
            elif layer < last and math.isfinite(grad[last]) and grad[last] > 0:
                if g < self.vanishing * grad[last]:
                    found["vanishing"].append((layer, f"{g:.2g} ({g / grad[last]:.1g} of the last layer's)"))
                elif g > self.exploding * grad[last]:
                    found["exploding"].append((layer, f"{g:.2g} ({g / grad[last]:.2g} times the last layer's)"))
            if math.isfinite(g) and first[layer] > 0 and g > self.exploding * first[layer]:
                found["exploding"].append((layer, f"{g:.2g}, {g / first[layer]:.2g} times its value at step "
                                                  f"{h['step'][0]}"))
            ratio = h["update_ratio"][layer][record]
            if ratio > self.max_update_ratio:
                found["updates"].append((layer, f"{ratio:.2g}"))
            if h["saturated"][layer][record] > self.max_saturated:
                found["saturated"].append((layer, f"{h['saturated'][layer][record]:.0%}"))
            if h["dead"][layer][record] > self.max_dead:
                found["dead"].append((layer, f"{h['dead'][layer][record]:.0%}"))
        for problem, hits in found.items():
            new = []
            for layer, detail in hits:
                if (problem, layer) not in self._found and layer not in [l for l, _ in new]:
                    self._found.add((problem, layer))
                    new.append((layer, detail))
            if new:
                self._report(self._message(problem, new, step, grad[last]))

    def _report(self, message):
        self.findings.append(message)
        if self.warn:
            warnings.warn(message, GradientFlowWarning, stacklevel=2)

    def _message(self, problem, hits, step, last_norm):
        layers = [layer for layer, _ in hits]
        where = _layer_list(layers, len(self.activations))
        shown = hits if len(hits) <= 3 else [hits[0], hits[-1]]  # the first and last of a long run
        details = (" ... " if len(hits) > 3 else "; ").join(f"layer {layer + 1}: {detail}" for layer, detail in shown)
        activations = sorted({self.activations[layer] for layer in layers})
        inits = sorted({self.inits[layer] for layer in layers})
        kinds = " and ".join(activations)
        if problem == "vanishing":
            remedy = []
            if set(inits) - {"glorot", "glorot_uniform", "xavier", "glorot_normal", "he", "he_normal",
                             "he_uniform", "lecun", "lecun_normal"}:
                remedy.append(f"replace init={inits[0]!r} by Glorot (init='glorot', for sigmoid/tanh) or He "
                              f"(init='he', for ReLU) initialisation, which keep the gradient's scale from layer "
                              f"to layer")
            if set(activations) & set(BOUNDED):
                remedy.append("use ReLU activations (activation='relu', init='he'): a sigmoid's derivative is at "
                              "most 0.25 and shrinks the gradient at every layer")
            remedy.append("or use fewer layers")
            return (f"vanishing gradients at step {step}: the weight-gradient norm of {where} ({kinds}) is below "
                    f"{self.vanishing:g} of the last layer's ({last_norm:.2g}), so those layers barely learn "
                    f"[{details}]. Try: " + "; ".join(remedy) + ".")
        if problem == "exploding":
            return (f"exploding gradients at step {step} in {where} ({kinds}) [{details}]. Try a smaller learning "
                    f"rate (now {self.model.optimizer.lr:g}) or gradient clipping (e.g. clip_norm=1.0 in the "
                    f"optimizer), and Glorot (sigmoid/tanh) or He (ReLU) initialisation.")
        if problem == "updates":
            return (f"large updates at step {step}: one step changes the weights of {where} by more than "
                    f"{self.max_update_ratio:g} of their norm (||ΔW|| / ||W||: {details}; about 1e-3 is usual). "
                    f"Try a smaller learning rate (now {self.model.optimizer.lr:g}).")
        if problem == "saturated":
            return (f"saturated units at step {step}: over {self.max_saturated:.0%} of the outputs of {where} "
                    f"({kinds}) sit within {self.saturation:g} of their range from an asymptote, where the "
                    f"derivative is nearly 0 and the gradient stops [{details}]. Try Glorot initialisation "
                    f"(init='glorot'), standardised inputs, a smaller learning rate, or ReLU activations.")
        return (f"dead ReLUs at step {step}: over {self.max_dead:.0%} of the units of {where} output 0 for every "
                f"row of the batch and get no gradient [{details}]. Try He initialisation (init='he') and a "
                f"smaller learning rate (now {self.model.optimizer.lr:g}).")

    # -------------------------------------------------------------------- output
    def report(self):
        """A text table of the last record per layer, then the findings (or that there were none)."""
        h = self.history
        if not h["step"]:
            return "gradient flow: nothing recorded (no training step ran with the monitor attached)"
        n = len(h["step"])
        last_grad = h["grad_norm"][-1][-1]
        lines = [f"gradient flow at step {h['step'][-1]} ({n} record{'s' if n != 1 else ''}, every "
                 f"{self.every} steps):",
                 f"  {'layer':>5}  {'activation':<10}  {'||dL/dW||':>9}  {'/ last':>7}  {'||dW||/||W||':>12}  "
                 f"{'saturated':>9}  {'dead':>5}"]
        for layer, activation in enumerate(self.activations):
            g = h["grad_norm"][layer][-1]
            relative = g / last_grad if last_grad > 0 and math.isfinite(last_grad) else math.nan
            saturated, dead = h["saturated"][layer][-1], h["dead"][layer][-1]
            lines.append(f"  {layer + 1:>5}  {activation:<10}  {g:>9.2e}  {relative:>7.1e}  "
                         f"{h['update_ratio'][layer][-1]:>12.2e}  "
                         f"{'-' if math.isnan(saturated) else f'{saturated:.0%}':>9}  "
                         f"{'-' if math.isnan(dead) else f'{dead:.0%}':>5}")
        if self.findings:
            lines.append(f"{len(self.findings)} finding{'s' if len(self.findings) != 1 else ''}:")
            lines.extend(f"  - {finding}" for finding in self.findings)
        else:
            lines.append("no gradient-flow problems found")
        return "\n".join(lines)

    def plot(self, path=None, title=None):
        """Per-layer records over the steps: see :func:`gpubp.plot.gradient_flow`."""
        from .plot import gradient_flow

        return gradient_flow(self, path=path, title=title)


def _layer_list(layers, n_layers):
    """``"layer 3"``, ``"layers 1-7"`` or ``"layers 1, 4"`` (1-based), with the model's number of layers."""
    ordinals = [layer + 1 for layer in layers]
    if len(ordinals) == 1:
        return f"layer {ordinals[0]} of {n_layers}"
    if ordinals == list(range(ordinals[0], ordinals[-1] + 1)):
        return f"layers {ordinals[0]}-{ordinals[-1]} of {n_layers}"
    return "layers " + ", ".join(str(n) for n in ordinals) + f" of {n_layers}"
