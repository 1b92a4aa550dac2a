"""The :class:`Sequential` model: a stack of Dense layers over flat parameter buffers, and its training step."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .backend import Backend, get_backend, resolve_dtype
from .buffers import INFERENCE_BATCH, BatchPlan, plan_bytes
from .callbacks import History
from .data import StandardScaler
from .divergence import DivergenceStatus
from .errors import InvalidInputError, InvalidTypeError, NotCompiledError, TrainingDiverged
from .io import save_model
from .kernels.contract import STATUS_LOSS
from .layers import Dense, Dropout, layer_from_config
from .losses import Loss, get_loss
from .metrics import Evaluation, check_metrics_fit_loss, check_metrics_fit_targets, get_metrics
from .optim import Optimizer, get_optimizer, optimizer_from_config
from .train import fit
from .validation import (as_host_array, as_list, as_target_array, check_feature_matrix, check_finite_for_dtype,
                         check_positive_int, load_features)
from .weights import row_weights

#: Training plans kept per model (fit uses at most two batch sizes), and inference plans per thread.
MAX_TRAINING_PLANS = 8
MAX_INFERENCE_PLANS = 4


class Sequential:
    """A multi-layer perceptron: ``Dense`` layers, and ``Dropout`` between them, applied in order.

    Parameters
    ----------
    layers : list of Dense and Dropout
        The last one a Dense.
    input_dim : int, optional
        Number of input features; if omitted the model is built on the first
        ``fit``/``train_on_batch`` from the data.
    backend : {"auto", "cpu", "gpu", "numpy", "cupy"}
    dtype : {"float32", "float64"}
    seed : int, optional
        Seeds the weight initialisation and the epoch shuffling; the same seed
        on the same backend gives bit-identical weights after ``fit`` on the CPU.

    All parameters live in one flat device array ``[W_1, ..., W_L, b_1, ..., b_L]``
    (gradients in a twin), and each layer sees views of it, so an optimizer
    step is one kernel pass over every parameter.
    """

    def __init__(self, layers: list[Dense | Dropout], input_dim: int | None = None, backend: str | Backend = "auto",
                 dtype: str | np.dtype = "float32", seed: int | None = None) -> None:
        if not isinstance(layers, (list, tuple)):
            raise InvalidTypeError(f"layers must be a list of Dense layers, got {type(layers).__name__}")
        layers = list(layers)
        if not layers:
            raise InvalidInputError("Sequential needs at least one Dense layer")
        for layer in layers:
            if not isinstance(layer, (Dense, Dropout)):
                raise InvalidTypeError(f"Sequential takes Dense and Dropout layers, got {type(layer).__name__}")
        if not isinstance(layers[-1], Dense):
            raise InvalidInputError(f"the last layer must be a Dense layer (the outputs), got {layers[-1]!r}")
        self.layers = layers
        #: the layers with parameters, in order: ``W_l, b_l`` of :meth:`get_weights` are those of ``dense_layers[l]``
        self.dense_layers = [layer for layer in layers if isinstance(layer, Dense)]
        self.backend = get_backend(backend)
        self.dtype = resolve_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InvalidInputError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.input_dim = None
        self.loss = self.optimizer = None
        self.metrics = []
        self.scaler = None
        #: names of the input columns and labels of the output classes, saved with the model (see set_labels)
        self.feature_names = self.classes = None
        self.stop_training = False
        self.status = DivergenceStatus(self.backend)
        #: capture each training step as one CUDA graph per batch shape and replay it, on backends that
        #: can (the GPU); False runs every step eagerly. ``GPUBP_CUDA_GRAPHS=0`` sets the default to False.
        self.cuda_graphs = os.environ.get("GPUBP_CUDA_GRAPHS", "1") != "0"
        self._plans = OrderedDict()
        self._per_thread = threading.local()
        if input_dim is not None:
            self.build(input_dim)

    # ------------------------------------------------------------------ build
    @property
    def built(self):
        return self.input_dim is not None

    @property
    def n_outputs(self):
        return self.layers[-1].units

    def build(self, input_dim: int) -> None:
        """Draw the initial weights (host, float64, seeded) and lay out the flat buffers."""
        input_dim = check_positive_int("input_dim", input_dim)
        width = input_dim
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.units = width  # as wide as its input
            width = layer.units
        fan_ins = [input_dim] + [layer.units for layer in self.layers[:-1]]
        fan_ins = [fan_in for layer, fan_in in zip(self.layers, fan_ins) if isinstance(layer, Dense)]
        self._require_memory_for_parameters(fan_ins)
        init_seed, shuffle_seed, dropout_seed = np.random.SeedSequence(self.seed).spawn(3)
        rng = np.random.default_rng(init_seed)
        initial = [layer.initial_weights(rng, fan_in) for layer, fan_in in zip(self.dense_layers, fan_ins)]
        self.input_dim = input_dim  # built from here on: only once the initial weights are drawn and checked
        self.shuffle_rng = np.random.default_rng(shuffle_seed)
        #: the (1,) int64 key of the Dropout layers' masks on the device, in [0, 2**32)
        #: [key, first row]: the dropout masks' key, and the row of the whole batch the step's first row is
        #: (see :meth:`set_dropout_first_row`)
        self.dropout_seed = self.backend.staged(np.array([dropout_seed.generate_state(1, np.uint32)[0], 0],
                                                         np.int64))
        self.dropout_seed.upload()
        shapes = [W.shape for W, _ in initial] + [b.shape for _, b in initial]
        sizes = [int(np.prod(s)) for s in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        xp = self.backend.xp
        self._params = self.backend.zeros(int(offsets[-1]), self.dtype)
        self._grads = self.backend.zeros(int(offsets[-1]), self.dtype)
        self.n_weights = int(offsets[len(self.dense_layers)])
        #: the flat parameter buffer ``[W_1, ..., W_L, b_1, ..., b_L]`` on the device
        self.params = self._params

        def views(flat):
            return [flat[offsets[i]:offsets[i + 1]].reshape(s) for i, s in enumerate(shapes)]

        p, g = views(self._params), views(self._grads)
        L = len(self.dense_layers)
        for i, layer in enumerate(self.dense_layers):
            layer.bind(p[i], p[L + i], g[i], g[L + i])
        self._param_views = [v for i in range(L) for v in (p[i], p[L + i])]
        #: (start, stop) of each of W_1, b_1, ..., W_L, b_L in the flat buffers
        self.param_ranges = [(int(offsets[j]), int(offsets[j + 1])) for i in range(L) for j in (i, L + i)]
        for view, (W, b) in zip(self._param_views[0::2], initial):
            xp.copyto(view, self.backend.asarray(W, self.dtype))
        self._clear_plans()
        if self.optimizer is not None:
            self._bind_optimizer()
        return self

    def _require_memory_for_parameters(self, fan_ins):
        """InsufficientMemory before any weight is drawn when the parameters, their gradients, the
        optimizer's state and the float64 initial weights on the host would not fit."""
        weights = sum(fan_in * layer.units for fan_in, layer in zip(fan_ins, self.dense_layers))
        n = weights + sum(layer.units for layer in self.dense_layers)
        buffers = 2 + (len(self.optimizer.state_names) if self.optimizer is not None else 0)
        shapes = " -> ".join(str(width) for width in [fan_ins[0]] + [layer.units for layer in self.dense_layers])
        self.backend.require_memory(n * self.dtype.itemsize * buffers + weights * 8,
                                    f"for the {n:,} parameters of a {shapes} model", "use smaller layers")

    def count_params(self) -> int:
        """Total number of trainable scalars."""
        return int(self._params.size) if self.built else 0

    def summary(self) -> str:
        """A text table of layers, output shapes and parameter counts."""
        lines = [f"Sequential on {self.backend.name} ({self.backend.device_name}), dtype {self.dtype.name}"]
        fan_in = self.input_dim
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                lines.append(f"  {i}: Dropout(rate={layer.rate:g})  params: 0")
                continue
            n = (fan_in + 1) * layer.units if fan_in else "?"
            lines.append(f"  {i}: Dense({fan_in} -> {layer.units}, {layer.activation})  params: {n}")
            fan_in = layer.units
        lines.append(f"  total params: {self.count_params()}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- compile
    def compile(self, loss: str | dict | Loss = "softmax_cross_entropy", optimizer: str | Optimizer = "adam",
                metrics: Iterable | str | None = ()) -> Sequential:
        """Choose the loss (name or Loss), the optimizer (name or Optimizer) and extra metrics.

        ``metrics``: names or :class:`gpubp.metrics.Metric` objects among "accuracy", "precision",
        "recall", "f1", "top_k_accuracy" (k = 5; "top_3_accuracy" for k = 3) for class labels, and
        "rmse", "mae", "r2" for regression (see :mod:`gpubp.metrics`); a single name and None are
        accepted too. :meth:`evaluate` returns every one, and ``fit`` logs each on the training set
        after every epoch (one extra forward pass over the training data per epoch, for all of them)
        and, as "val_" + name, on the validation data. Regression metrics with a cross-entropy loss,
        and top-k accuracy with binary_cross_entropy, are refused here; classification metrics on
        real-valued targets when fit or evaluate sees them.

        Every argument is checked before anything changes. The cross-entropy
        losses need a linear last layer (they take logits), and the softmax one
        at least two output units (one per class: for two classes with one
        unit, use "binary_cross_entropy").
        """
        metrics = get_metrics(metrics)
        loss = get_loss(loss)
        last = self.layers[-1].activation
        if loss.name in ("softmax_cross_entropy", "binary_cross_entropy") and last != "linear":
            raise InvalidInputError(
                f"the {loss.name} loss works on logits, so the last Dense layer must be linear "
                f"(activation=None), but it has activation={last!r}; the loss applies the "
                f"{'softmax' if loss.name.startswith('softmax') else 'sigmoid'} itself and predict() returns probabilities"
            )
        if loss.name == "softmax_cross_entropy" and self.n_outputs < 2:
            raise InvalidInputError(
                f"the softmax_cross_entropy loss needs a last Dense layer with one unit per class (>= 2), but it "
                f"has {self.n_outputs}: a softmax over one unit is always 1 and nothing is learnt; for two classes "
                f"with one output unit use loss='binary_cross_entropy'")
        check_metrics_fit_loss(metrics, loss, self.n_outputs)
        optimizer = get_optimizer(optimizer)
        self.metrics, self.loss, self.optimizer = [m.name for m in metrics], loss, optimizer
        self._clear_plans()
        if self.built:
            self._bind_optimizer()
        return self

    def _bind_optimizer(self):
        self.backend.require_memory(self._params.nbytes * len(self.optimizer.state_names),
                                    f"for the state of {type(self.optimizer).__name__}", "use smaller layers")
        self.optimizer.bind(self.backend, self._params, self._grads, self.n_weights,
                            [layer.W for layer in self.dense_layers])
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):  # masks keyed by position, drawn at the optimizer's step
                layer.bind(i, self.dropout_seed.device, self.optimizer.clock.device)

    def require_compiled(self):
        """Raise NotCompiledError unless :meth:`compile` has chosen a loss and an optimizer."""
        if self.loss is None:
            raise NotCompiledError("call model.compile(loss=..., optimizer=...) before training")

    # ------------------------------------------------------------- batch plans
    def _clear_plans(self):
        self._plans = OrderedDict()
        self._per_thread = threading.local()
        self._last_plan = None  # the plan of the latest train_step (see layer_outputs)

    def batch_plan(self, batch_size, targets=None):
        """The cached :class:`~gpubp.buffers.BatchPlan` for training on ``batch_size`` rows.

        ``targets`` is the prepared target array (for its row shape and dtype).
        The newest :data:`MAX_TRAINING_PLANS` plans are kept. Training plans are
        shared: train one model from one thread at a time.
        """
        return self._cached_plan(self._plans, MAX_TRAINING_PLANS, batch_size, targets)

    def _inference_plan(self, batch_size, targets=None):
        """A plan for predict/evaluate, cached per thread (so concurrent callers never share buffers)."""
        plans = getattr(self._per_thread, "plans", None)
        if plans is None:
            plans = self._per_thread.plans = OrderedDict()
        return self._cached_plan(plans, MAX_INFERENCE_PLANS, batch_size, targets)

    def inference_plan_bytes(self, batch_size, targets=None):
        """Bytes of the buffers of a plan for ``batch_size`` rows (those of training, an upper bound for
        inference); ``targets`` as in :meth:`batch_plan`."""
        widths = [layer.units for layer in self.layers]
        row, itemsize = ((), 8) if targets is None else (targets.shape[1:], targets.dtype.itemsize)
        return plan_bytes(batch_size, self.input_dim, widths, self.dtype.itemsize, row, itemsize,
                          [layer.keeps_pre_activation for layer in self.layers])

    def _cached_plan(self, plans, limit, batch_size, targets):
        """The plan for (batch size, target layout) from the LRU cache ``plans`` of at most ``limit`` plans."""
        key = (int(batch_size), None if targets is None else (targets.shape[1:], targets.dtype.str))
        plan = plans.get(key)
        if plan is not None:
            plans.move_to_end(key)
            return plan
        widths = [layer.units for layer in self.layers]
        self.backend.require_memory(self.inference_plan_bytes(batch_size, targets),
                                    f"for the buffers of a batch of {batch_size} rows", "pass a smaller batch_size")
        plan = plans[key] = BatchPlan(self.backend, batch_size, self.input_dim, widths, self.dtype,
                                      None if targets is None else targets.shape[1:],
                                      None if targets is None else targets.dtype,
                                      [layer.keeps_pre_activation for layer in self.layers])
        while len(plans) > limit:
            plans.popitem(last=False)
        return plan

    # ------------------------------------------------------ the training step
    def _forward(self, x, outputs, kernels=None, training=False, pre_activations=None):
        """Run every layer on ``x``; returns the last layer's output (raw logits). ``training``: a training
        step's forward pass, where Dropout layers drop units (else they pass their input on).
        ``pre_activations`` (a plan's, for a backward pass to follow) receive the pre-activations of the
        layers that keep theirs."""
        kernels = kernels or self.backend.kernels
        pre_activations = pre_activations or [None] * len(self.layers)
        for layer, out, pre in zip(self.layers, outputs, pre_activations):
            x = layer.forward(kernels, x, out, training, pre)
        return x

    def _backward(self, plan, targets=None, kernels=None, training=False):
        """Backpropagate ``plan.loss_grad`` = dL/d(logits) into the flat gradient buffer.

        ``delta_l = (delta_{l+1} W_{l+1}^T) * f'(z_l)``: the GEMM writes dL/dy_l
        into scratch, and the activation kernel writes delta_l over y_l once
        y_l has served for ``dW_{l+1} = y_l^T delta_{l+1}``; a Dropout layer
        multiplies dL/d(its output), in scratch, by its mask in place.
        ``targets`` (from the optimizer, one per Dense layer) redirects the
        weight-gradient GEMMs; ``training`` as in :meth:`_forward`.
        """
        kernels, layers, outputs = kernels or self.backend.kernels, self.layers, plan.outputs
        dense_targets = iter(targets or [None] * len(self.dense_layers))
        targets = [next(dense_targets) if isinstance(layer, Dense) else None for layer in layers]
        delta, pre = plan.loss_grad, plan.pre_activations
        if layers[-1].activation != "linear":  # only with MSE: cross-entropy losses take logits
            delta = layers[-1].activation_backward_(kernels, delta, outputs[-1], pre[-1])
        for l in range(len(layers) - 1, 0, -1):
            layers[l].backward(kernels, delta, outputs[l - 1], plan.scratch[l - 1], targets[l], training)
            delta = layers[l - 1].activation_backward_(kernels, plan.scratch[l - 1], outputs[l - 1], pre[l - 1])
        layers[0].backward(kernels, delta, plan.x, None, targets[0], training)

    def gradient_hooks(self):
        """``[(name, hook)]`` run on the flat gradient between the backward pass and the update, in order.

        In data-parallel training first the all-reduce of the gradient across
        ranks (see :mod:`gpubp.communicator`), then the optimizer's clip_value
        and clip_norm; the finiteness check is part of the guarded update that
        follows (see ``gpubp.kernels.contract``).
        """
        return self.optimizer.gradient_hooks()

    def train_step(self, plan, loss_out=None, batches=None):
        """One optimizer step on the batch already in ``plan`` (see :meth:`batch_plan`).

        gather (done) -> forward -> loss -> backward -> gradient hooks -> guarded update.
        The optimizer may point the weight-gradient GEMMs at its own targets
        (plain SGD rides in them); layers write wherever they are told.
        Nothing is read back to the host: the loss lands in ``loss_out`` (a (1,)
        float64 device array, default ``plan.loss``), which is returned, and a
        NaN/Inf loss, gradient or update is recorded in :attr:`status`, after
        which no update is applied until :meth:`read_divergence` reports it.

        With ``batches`` (a :class:`~gpubp.buffers.EpochBatches` whose
        ``select`` was called), the step first gathers its batch into ``plan``
        and ends by storing its loss in ``batches.losses``.

        The host stages the step's values (step count, learning rate, batch
        position) first; the device work that follows reads them from device
        memory, so on a backend that captures steps (:attr:`cuda_graphs`) the
        whole step is recorded once per plan as one CUDA graph and replayed.
        """
        kernels = self.backend.kernels
        self._last_plan = plan
        self.optimizer.begin_step()
        graphs = self.cuda_graphs and self.backend.captures_steps
        loss = plan.loss if graphs or loss_out is None else loss_out

        weights = plan.weights if getattr(batches, "weights", None) is not None else None

        def body(step_kernels):
            if batches is not None:
                batches.gather_(step_kernels, plan)
            self._step_body(step_kernels, plan, loss, weights)
            if batches is not None:
                batches.store_loss_(step_kernels, loss)

        if graphs:
            key = (id(self.loss), id(self.optimizer), self.optimizer.step_signature(), kernels.matmul_precision(),
                   None if batches is None else batches.serial)
            self.backend.run_step(plan, key, body)
        else:
            body(kernels)
        if loss_out is None or loss_out is loss:
            return loss
        kernels.copy_(loss, loss_out)
        return loss_out

    def _step_body(self, kernels, plan, loss, weights=None):
        """The device work of one step: forward, loss (weighted by the rows' ``weights`` unless None),
        backward, gradient hooks, guarded update."""
        status, clock = self.status.array, self.optimizer.clock.device
        logits = self._forward(plan.x, plan.outputs, kernels, training=True, pre_activations=plan.pre_activations)
        self.loss.forward_backward(kernels, logits, plan.y, plan.loss_grad, loss, weights)
        kernels.check_finite_(loss, status, STATUS_LOSS, clock)
        self._backward(plan, self.optimizer.weight_gradient_targets(kernels), kernels, training=True)
        for _, hook in self.gradient_hooks():
            hook(kernels, self._grads)
        self.optimizer.update(kernels, status)

    def test_step(self, plan, loss_out=None, training=False, weighted=False):
        """Forward and loss on the batch in ``plan``, no update; returns the (1,) device loss array.

        The logits stay in ``plan.outputs[-1]``. With ``training`` the Dropout layers drop units as in a
        training step, with the masks of the optimizer's current step (the last one staged). With
        ``weighted`` the loss weights the rows by ``plan.weights``.
        """
        loss = plan.loss if loss_out is None else loss_out
        logits = self._forward(plan.x, plan.outputs, training=training, pre_activations=plan.pre_activations)
        self.loss.forward_backward(self.backend.kernels, logits, plan.y, plan.loss_grad, loss,
                                   plan.weights if weighted else None)
        return loss

    def compute_gradients(self, plan, training=False, weighted=False):
        """Forward, loss and backward on ``plan`` without an update; returns the flat gradient and the loss.
        ``training`` and ``weighted`` as in :meth:`test_step`: the gradient of the network the step's
        Dropout masks leave, of the loss weighted by ``plan.weights``."""
        loss = self.test_step(plan, training=training, weighted=weighted)
        self._backward(plan, training=training)
        return self._grads, loss

    def layer_outputs(self, x=None):
        """Every layer's output ``[y_1, ..., y_L]`` (device arrays; ``y_L`` holds the logits) on the device
        rows ``x`` in the model's input layout (scaled, as :meth:`prepare` returns them); None takes the
        batch of the latest :meth:`train_step`. The arrays are buffers of this thread's inference plan,
        valid until its next predict, evaluate or layer_outputs: a diagnostic reads them at once."""
        if x is None:
            if self._last_plan is None:
                raise NotCompiledError("layer_outputs() takes the batch of the latest training step, but none "
                                       "has run since the model was built or compiled: pass x")
            x = self._last_plan.x
        plan = self._inference_plan(x.shape[0])
        self._forward(x, plan.outputs)
        return list(plan.outputs)

    def read_divergence(self):
        """Read :attr:`status` (one host read); None while every step was finite.

        Otherwise returns the :class:`~gpubp.divergence.Divergence` and resets
        the optimizer's step count to that step, clearing the status: the
        parameters and optimizer state are those from before it.
        """
        divergence = self.status.read()
        if divergence is not None:
            self.optimizer.iterations = divergence.iteration
            self.status.clear()
        return divergence

    def divergence_advice(self):
        return (f"Try a smaller learning rate (now {self.optimizer.lr:g}) or gradient clipping "
                f"(clip_norm=...)")

    # ---------------------------------------------------------------- data
    def set_scaler(self, scaler):
        """Standardise every input of fit/predict/evaluate with ``scaler`` (a fitted
        ``gpubp.data.StandardScaler``, or None); it is saved with the model.

        The scaler must be fitted on the (n_samples, n_features) feature matrix,
        with as many features as the model takes; a model without weights yet
        is built for the scaler's number of features (as :meth:`set_weights`
        builds it from ``W_1``), so later data of another width is refused.
        """
        if scaler is not None:
            n_features = self._scaler_features(scaler)
            if self.built and n_features != self.input_dim:
                raise InvalidInputError(
                    f"the scaler was fitted on {n_features} features but the model expects {self.input_dim}")
            if not self.built:
                self.build(n_features)
        self.scaler = scaler
        return self

    @staticmethod
    def _scaler_features(scaler):
        """The number of features of ``scaler``, raising unless it is a fitted StandardScaler of 2-D data."""
        if not isinstance(scaler, StandardScaler):
            raise InvalidTypeError(f"scaler must be a gpubp.data.StandardScaler or None, got {type(scaler).__name__}")
        if not hasattr(scaler, "mean_") or not hasattr(scaler, "scale_"):
            raise InvalidInputError("the scaler is not fitted: call scaler.fit(X_train) before set_scaler")
        mean, scale = np.asarray(scaler.mean_), np.asarray(scaler.scale_)
        if mean.ndim != 1:
            raise InvalidInputError(
                f"the scaler was fitted on {'a 1-D vector' if mean.ndim == 0 else f'{mean.ndim + 1}-D data'} "
                f"(mean_ of shape {mean.shape}); fit it on the (n_samples, n_features) feature matrix")
        if mean.size == 0:
            raise InvalidInputError("the scaler was fitted on 0 features")
        if (scale.shape != mean.shape or mean.dtype.kind not in "biuf" or scale.dtype.kind not in "biuf"
                or not np.isfinite(mean).all() or not np.isfinite(scale).all() or not (scale > 0).all()):
            raise InvalidInputError(f"the scaler's mean_ and scale_ must be finite numbers of the same shape, with "
                                    f"scale_ > 0; got shapes {mean.shape} and {scale.shape}")
        return int(mean.size)

    def _features(self, X, name="X", out=None):
        """Validate X, move it to the device (into ``out`` when given) and apply the scaler, if any."""
        X = check_feature_matrix(self.backend, X, self.input_dim, name)
        return load_features(self.backend, X, self.dtype, name, self.scaler, out)

    def build_for(self, X):
        """Build the model from the width of ``X`` when it has no weights yet."""
        if not self.built:
            X = as_host_array(X, "X") if not hasattr(X, "shape") else X
            if len(getattr(X, "shape", ())) != 2:
                raise InvalidInputError(
                    f"X must be 2-D (n_samples, n_features), got shape {getattr(X, 'shape', None)}")
            if X.shape[1] == 0:
                raise InvalidInputError("X has 0 features")
            self.build(X.shape[1])
        return self

    def prepare(self, X, y, name_x="X", name_y="y"):
        """Validate (X, y), move them to the device once and apply the scaler.

        Returns ``(X, y, with_accuracy)``: device arrays in the layout of the
        loss kernel, and whether accuracy means something for these targets.
        """
        self.require_compiled()
        self.build_for(X)
        X = self._features(X, name_x)
        y_device = as_target_array(self.backend, self.loss, y, X.shape[0], self.n_outputs, self.dtype, name_y)
        with_accuracy = self.loss.reports_accuracy(y, self.n_outputs)
        check_metrics_fit_targets(get_metrics(self.metrics), self.loss, with_accuracy, name_y)
        return X, y_device, with_accuracy

    def train_on_batch(self, x: ArrayLike, y: ArrayLike) -> float:
        """One optimizer step on (x, y); returns the batch loss (before the update) as a host float.

        Raises :class:`gpubp.TrainingDiverged` when the loss, the gradient or
        the update is not finite; the weights are then those from before the batch.
        """
        self.require_compiled()
        self.build_for(x)
        self.read_divergence()  # a failure left unread by an aborted fit: rewinds the step count to it
        x = check_feature_matrix(self.backend, x, self.input_dim, "X")
        y = as_target_array(self.backend, self.loss, y, x.shape[0], self.n_outputs, self.dtype, "y")
        plan = self.batch_plan(x.shape[0], y)
        load_features(self.backend, x, self.dtype, "X", self.scaler, out=plan.x)  # validated while copied
        self.backend.kernels.copy_(y, plan.y)
        loss = float(self.backend.to_host(self.train_step(plan))[0])
        divergence = self.read_divergence()
        if divergence is not None:
            raise TrainingDiverged(
                f"training diverged: {divergence.reason}; the weights and optimizer state are those from "
                f"before this batch. {self.divergence_advice()}",
                iteration=divergence.iteration, reason=divergence.reason)
        return loss

    def fit(self, X: ArrayLike | str | os.PathLike, y: ArrayLike | str | os.PathLike | None, batch_size: int = 32,
            epochs: int = 1, validation_data: tuple | None = None, validation_split: float = 0.0,
            shuffle: bool = True, callbacks: list | None = None, verbose: int = 1, on_divergence: str = "raise",
            checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1, checkpoint_keep: int = 3,
            resume: bool = False, check_every: int | None = None, distributed: str | object | None = None,
            sample_weight: ArrayLike | None = None, class_weight: dict | str | None = None) -> History:
        """Train with mini-batch gradient descent; returns a :class:`gpubp.History`.

        See :func:`gpubp.train.fit` for the parameters.
        """
        return fit(self, X, y, batch_size=batch_size, epochs=epochs, validation_data=validation_data,
                   validation_split=validation_split, shuffle=shuffle, callbacks=callbacks, verbose=verbose,
                   on_divergence=on_divergence, checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, checkpoint_keep=checkpoint_keep, resume=resume,
                   check_every=check_every, distributed=distributed, sample_weight=sample_weight,
                   class_weight=class_weight)

    # ------------------------------------------------------------- inference
    def _chunks(self, n, batch_size):
        batch_size = check_positive_int("batch_size", INFERENCE_BATCH if batch_size is None else batch_size)
        for start in range(0, n, batch_size):
            yield start, min(start + batch_size, n)

    def predict(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Predictions for X as a NumPy array on the host, shape (n_samples, n_outputs).

        Probabilities for the cross-entropy losses (softmax rows, or sigmoids),
        raw outputs otherwise. Safe to call from several threads at once.
        """
        if not self.built:
            raise NotCompiledError("the model has no weights yet: build it (input_dim=...) or fit it first")
        X = self._features(X)
        result = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        for start, stop in self._chunks(X.shape[0], batch_size):
            plan = self._inference_plan(stop - start)
            out = self._forward(X[start:stop], plan.outputs)
            if self.loss is not None:
                self.loss.output_activation_(self.backend.kernels, out)
            result[start:stop] = self.backend.to_host(out)
        return result

    def evaluate(self, X: ArrayLike, y: ArrayLike, batch_size: int | None = None,
                 sample_weight: ArrayLike | None = None) -> dict:
        """Mean loss, accuracy (None for real-valued targets) and every compiled metric on (X, y), as a
        dict of host floats: ``{"loss", "accuracy", "f1", ...}``. Thread-safe.

        ``sample_weight`` ((n_samples,) finite, >= 0) weights the loss: ``sum_i w_i l_i / n_samples``; the
        other metrics stay unweighted."""
        X, y, with_accuracy = self.prepare(X, y)
        weights = row_weights(self.backend, sample_weight, None, self.loss, y, X.shape[0], self.n_outputs)
        return self.evaluate_prepared(X, y, with_accuracy, batch_size, weights)

    def evaluate_prepared(self, X, y, with_accuracy, batch_size=None, weights=None):
        """:meth:`evaluate` on arrays from :meth:`prepare` (and :func:`~gpubp.weights.row_weights`): one
        pass, one host read at the end."""
        evaluation = self.evaluation(with_accuracy)
        return evaluation.result(self.evaluation_sums(evaluation, X, y, batch_size, weights))

    def evaluation(self, with_accuracy):
        """The :class:`~gpubp.metrics.Evaluation` of the loss and the compiled metrics, for targets that
        are class labels (``with_accuracy``, as :meth:`prepare` returns it) or not."""
        return Evaluation(self.backend.xp, self.loss, self.n_outputs, get_metrics(self.metrics), with_accuracy)

    def evaluation_sums(self, evaluation, X, y, batch_size=None, weights=None):
        """The sums of ``evaluation`` over the prepared (X, y) as a host float64 vector: each chunk adds
        its rows on the device, and the vector is read once at the end. ``weights``: the rows' (n,)
        float64 device weights of the loss, or None."""
        sums = evaluation.zeros()
        for start, stop in self._chunks(X.shape[0], batch_size):
            plan = self._inference_plan(stop - start, y)
            plan.load(X[start:stop], y[start:stop])
            if weights is not None:
                self.backend.kernels.copy_(weights[start:stop], plan.weights)
            loss = self.test_step(plan, weighted=weights is not None)
            evaluation.add_(sums, plan.outputs[-1], plan.y, loss, stop - start)
        return self.backend.to_host(sums).copy()

    def set_dropout_first_row(self, first_row):
        """The next training steps' batch rows are rows ``first_row``, ... of the whole batch (a rank's
        share in data-parallel training), so Dropout draws for each row the mask one process would; staged
        to the device only when it changes. No effect without Dropout layers."""
        if self.built and self.dropout_seed.host[1] != first_row:
            self.dropout_seed.host[1] = first_row
            self.dropout_seed.upload()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The model's training state as host values: ``{"params", "shuffle_rng", "scaler"}``, and
        ``"dropout_seed"`` (an int) for a model with Dropout layers.

        ``params`` is a copy of the flat parameter buffer; the architecture is
        :meth:`get_config`. A model file holds this; a checkpoint adds the
        optimizer's and the callbacks' state.
        """
        if not self.built:
            raise NotCompiledError("the model has no weights yet: build it (input_dim=...) or fit it first")
        state = {"params": self.backend.to_host(self._params).copy(),
                 "shuffle_rng": self.shuffle_rng.bit_generator.state,
                 "scaler": None if self.scaler is None else self.scaler.to_dict()}
        if len(self.dense_layers) != len(self.layers):
            state["dropout_seed"] = int(self.dropout_seed.host[0])
        return state

    def load_state_dict(self, state, scaler=None):
        """Restore :meth:`state_dict` output into this built model; ``scaler`` is the rebuilt scaler object.

        ``shuffle_rng`` and ``dropout_seed`` may be absent (a model file keeps
        neither). Everything is checked before anything changes.
        """
        if not self.built:
            raise NotCompiledError("the model has no weights yet: build it (input_dim=...) before loading a state")
        params = np.asarray(state["params"])
        if params.dtype.kind != "f":
            raise InvalidTypeError(f"the saved parameters must be floats, got dtype {params.dtype}")
        if params.shape != tuple(self._params.shape):
            raise InvalidInputError(f"the state holds {params.shape} parameters, the model has "
                                    f"{tuple(self._params.shape)}")
        check_finite_for_dtype(params.reshape(1, -1), self.dtype, "the saved parameters")
        rng_state = state.get("shuffle_rng")
        if rng_state is not None:
            try:
                type(self.shuffle_rng.bit_generator)().state = rng_state
            except (TypeError, ValueError, KeyError) as exc:
                raise InvalidInputError(f"the state holds an invalid shuffle generator state ({exc})") from None
        if scaler is not None and len(scaler.mean_) != self.input_dim:
            raise InvalidInputError(f"the state holds a scaler for {len(scaler.mean_)} features, "
                                    f"the model expects {self.input_dim}")
        dropout_seed = state.get("dropout_seed")
        if dropout_seed is not None and (isinstance(dropout_seed, bool) or not isinstance(dropout_seed, int)
                                         or not 0 <= dropout_seed < 2 ** 32):
            raise InvalidInputError(f"the state holds an invalid dropout seed {dropout_seed!r} (an integer in "
                                    f"[0, 2**32))")
        self.backend.copy_into(self._params, params)
        if rng_state is not None:
            self.shuffle_rng.bit_generator.state = rng_state
        if dropout_seed is not None:
            self.dropout_seed.host[0] = dropout_seed
            self.dropout_seed.upload()
        self.set_scaler(scaler)
        self.status.clear()  # a failure recorded before refers to a state that is gone

    # --------------------------------------------------------------- weights
    def get_weights(self) -> list[np.ndarray]:
        """``[W_1, b_1, ..., W_L, b_L]`` as NumPy copies; W_l (fan_in, fan_out), b_l (fan_out,)."""
        if not self.built:
            return []
        return [self.backend.to_host(v).copy() for v in self._param_views]

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        """Load ``[W_1, b_1, ..., W_L, b_L]`` (host or device arrays) into the model.

        W_l has shape (fan_in, units) and b_l (units,). A model without weights
        yet is built from W_1's first dimension (its input_dim). Every array is
        checked (count, type, shape, values finite in the model's dtype) before
        anything changes, so a refused call leaves the model as it was, unbuilt included.
        """
        if isinstance(weights, (str, bytes, dict)):
            raise InvalidTypeError(f"set_weights expects a list of arrays [W_1, b_1, ..., W_L, b_L], "
                                   f"got {type(weights).__name__}")
        try:
            weights = list(weights)
        except TypeError:
            raise InvalidTypeError("set_weights expects a list of arrays [W_1, b_1, ..., W_L, b_L], "
                                   f"got {type(weights).__name__}") from None
        expected = 2 * len(self.dense_layers)
        if len(weights) != expected:
            raise InvalidInputError(f"set_weights expects {expected} arrays ([W, b] per layer), got {len(weights)}")
        labels = [f"weights[{i}] ({'W' if i % 2 == 0 else 'b'}_{i // 2 + 1})" for i in range(expected)]
        first = self._host_weight(weights[0], labels[0])
        input_dim = self.input_dim
        if input_dim is None:  # unbuilt: W_1 gives the input width
            if first.ndim != 2 or first.shape[0] < 1:
                raise InvalidInputError(f"{labels[0]} must have shape (input_dim, {self.dense_layers[0].units}) with "
                                        f"input_dim >= 1 to build the model, got {first.shape}")
            input_dim = first.shape[0]
        fan_ins = [input_dim] + [layer.units for layer in self.dense_layers[:-1]]  # Dropout keeps the width
        shapes = [s for fan_in, layer in zip(fan_ins, self.dense_layers)
                  for s in ((fan_in, layer.units), (layer.units,))]
        converted = []
        for i, w in enumerate(weights):
            w = first if i == 0 else self._host_weight(w, labels[i])
            if w.shape != shapes[i]:
                raise InvalidInputError(f"{labels[i]} must have shape {shapes[i]}, got {w.shape}")
            check_finite_for_dtype(w.reshape(1, -1), self.dtype, labels[i])
            converted.append(w)
        if not self.built:
            self.build(input_dim)
        for view, w in zip(self._param_views, converted):
            self.backend.xp.copyto(view, self.backend.asarray(w, self.dtype))

    def _host_weight(self, w, label):
        """One entry of set_weights' list as a host array of numbers (its values unchecked)."""
        w = self.backend.to_host(w) if self.backend.owns(w) else as_host_array(w, label)
        if w.dtype.kind not in "biuf":
            raise InvalidTypeError(f"{label} must hold numbers, got dtype {w.dtype}")
        return w

    # ---------------------------------------------------------------- config
    def set_labels(self, feature_names=None, classes=None):
        """Name the input columns and label the output classes (as scikit-learn's ``feature_names_in_`` and
        ``classes_``); both are saved with the model. ``feature_names``: distinct strings, one per input;
        ``classes``: distinct strings or numbers, one per output of a softmax (class ``k`` is ``classes[k]``)."""
        if feature_names is not None:
            names = as_list("feature_names", feature_names, lambda v: False, "a list of column names")
            if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
                raise InvalidInputError(f"feature_names must be distinct strings, got {names!r}")
            if self.built and len(names) != self.input_dim:
                raise InvalidInputError(f"feature_names names {len(names)} columns, the model has {self.input_dim} "
                                        f"inputs")
            feature_names = names
        if classes is not None:
            labels = as_list("classes", classes, lambda v: False, "a list of class labels")
            if (not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in labels)
                    or len(set(labels)) != len(labels) or len(labels) != self.n_outputs):
                raise InvalidInputError(f"classes must be {self.n_outputs} distinct strings or numbers, one per "
                                        f"output, got {labels!r}")
            classes = labels
        self.feature_names, self.classes = feature_names, classes
        return self

    def get_config(self) -> dict:
        config = {
            "layers": [layer.get_config() for layer in self.layers],
            "input_dim": self.input_dim,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "loss": None if self.loss is None else self.loss.get_config(),
            "optimizer": None if self.optimizer is None else self.optimizer.get_config(),
        }
        if self.metrics:  # only when compiled with some: configs saved before metrics stay equal
            config["metrics"] = list(self.metrics)
        for key in ("feature_names", "classes"):  # only when set: configs saved before them stay equal
            if getattr(self, key) is not None:
                config[key] = list(getattr(self, key))
        return config

    def save(self, path: str | os.PathLike) -> str:
        """Write the architecture, weights and compile settings to an ``.npz`` file (no pickle)."""
        return save_model(self, path)

    # ------------------------------------------------------------------ printing, copies and pickles
    def __repr__(self):
        return self.summary()

    def __getstate__(self):
        """What ``pickle`` and ``copy.deepcopy`` keep: what a checkpoint holds, as host values -- the
        configuration (layers, loss, optimizer settings, labels), the backend's name, the metrics and,
        once built, the model's and the optimizer's state (weights, scaler, shuffle generator, moments,
        step count). A callable ``init`` is not kept (the weights are); buffers are made again."""
        return {"config": self.get_config(), "backend": self.backend.name, "metrics": list(self.metrics),
                "cuda_graphs": self.cuda_graphs, "state": self.state_dict() if self.built else None,
                "optimizer": self.optimizer.state_dict() if self.built and self.optimizer is not None else None}

    def __setstate__(self, saved):
        config = saved["config"]
        self.__init__([layer_from_config(layer) for layer in config["layers"]], backend=saved["backend"],
                      dtype=config["dtype"], seed=config["seed"])
        self.cuda_graphs = saved["cuda_graphs"]
        if config.get("loss") is not None:
            self.compile(loss=config["loss"], optimizer=optimizer_from_config(config["optimizer"]),
                         metrics=saved["metrics"])
        self.set_labels(config.get("feature_names"), config.get("classes"))
        if config["input_dim"] is not None:
            self.build(config["input_dim"])
            state = saved["state"]
            self.load_state_dict(state, scaler=None if state["scaler"] is None
                                 else StandardScaler.from_dict(state["scaler"]))
            if saved["optimizer"] is not None:
                self.optimizer.load_state_dict(saved["optimizer"])
