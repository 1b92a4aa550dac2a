"""One SGD training step of the same MLP in each engine, ready to time.

Every builder returns an :class:`Engine` whose ``step()`` runs forward, softmax
cross-entropy, backward and a plain SGD update (lr 0.01, float32) on one fixed,
already-resident batch, and whose ``sync()`` waits for queued device work. The
MLP is ``n_in -> [width] * depth (ReLU) -> n_out``; weights are Glorot-uniform.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

LR = 0.01
ACTIVATION = "relu"


@dataclass
class Engine:
    name: str
    device: str
    step: Callable[[], object]
    sync: Callable[[], None]
    #: gpubp's batch plan, whose captured steps tell how the steps ran (``Backend.step_mode``)
    plan: object = None


def layer_sizes(n_in, width, depth, n_out):
    sizes = [n_in] + [width] * depth + [n_out]
    return list(zip(sizes[:-1], sizes[1:]))


def flops_per_step(batch, n_in, width, depth, n_out):
    """6 * B * sum(fan_in * fan_out): 2 for the forward GEMM, 4 for the two backward GEMMs."""
    return 6 * batch * sum(i * o for i, o in layer_sizes(n_in, width, depth, n_out))


def make_batch(batch, n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, n_in)).astype(np.float32), rng.integers(0, n_out, size=batch)


def initial_weights(n_in, width, depth, n_out, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, o in layer_sizes(n_in, width, depth, n_out):
        a = np.sqrt(6.0 / (i + o))
        out.append((rng.uniform(-a, a, size=(i, o)).astype(np.float32), np.zeros(o, np.float32)))
    return out


def has(module):
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------- gpubp
def gpubp_engine(backend, batch, n_in, width, depth, n_out):
    import gpubp as gb

    layers = [gb.Dense(width, activation=ACTIVATION) for _ in range(depth)] + [gb.Dense(n_out)]
    model = gb.Sequential(layers, input_dim=n_in, backend=backend, dtype="float32", seed=0)
    model.set_weights([w for pair in initial_weights(n_in, width, depth, n_out) for w in pair])
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.SGD(lr=LR))
    X, y = make_batch(batch, n_in, n_out)
    X, y, _ = model.prepare(X, y)
    plan = model.batch_plan(batch, y)
    plan.load(X, y)
    # the step fit() runs on each gathered batch
    return Engine("gpubp", model.backend.name, lambda: model.train_step(plan), model.backend.synchronize, plan)


# ----------------------------------------------------------------------------- plain NumPy
def numpy_engine(batch, n_in, width, depth, n_out):
    """The straightforward vectorized NumPy MLP: matmuls and NumPy expressions."""
    params = [[W, b] for W, b in initial_weights(n_in, width, depth, n_out)]
    X, y = make_batch(batch, n_in, n_out)
    onehot = np.eye(n_out, dtype=np.float32)[y]

    def step():
        acts = [X]
        for W, b in params[:-1]:
            acts.append(np.maximum(acts[-1] @ W + b, 0))
        z = acts[-1] @ params[-1][0] + params[-1][1]
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(batch), y]).mean()
        delta = (p - onehot) / batch
        for layer in range(len(params) - 1, -1, -1):
            W, b = params[layer]
            gW = acts[layer].T @ delta
            gb = delta.sum(axis=0)
            if layer:
                delta = (delta @ W.T) * (acts[layer] > 0)
            W -= LR * gW
            b -= LR * gb
        return loss

    return Engine("numpy", "cpu", step, lambda: None)


# ----------------------------------------------------------------------------- PyTorch eager
def torch_engine(device, batch, n_in, width, depth, n_out):
    import torch

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    modules = []
    for (W, b), is_last in zip(initial_weights(n_in, width, depth, n_out), [False] * depth + [True]):
        lin = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        modules.append(lin)
        if not is_last:
            modules.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*modules).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    X, y = make_batch(batch, n_in, n_out)
    X, y = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    return Engine("torch", device, step, sync)


# ----------------------------------------------------------------------------- JAX jit
def jax_engine(device, batch, n_in, width, depth, n_out):
    import jax
    import jax.numpy as jnp

    target = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    params = jax.device_put([(jnp.asarray(W), jnp.asarray(b)) for W, b in initial_weights(n_in, width, depth, n_out)],
                            target)
    X, y = make_batch(batch, n_in, n_out)
    X, y = jax.device_put(jnp.asarray(X), target), jax.device_put(jnp.asarray(y), target)

    def loss_fn(params, X, y):
        a = X
        for W, b in params[:-1]:
            a = jax.nn.relu(a @ W + b)
        z = a @ params[-1][0] + params[-1][1]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))

    def train_step(params, X, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), loss

    state = {"params": params}
    compiled = jax.jit(train_step, donate_argnums=0)

    def step():
        state["params"], loss = compiled(state["params"], X, y)
        return loss

    def sync():
        jax.block_until_ready(state["params"])

    return Engine("jax", device, step, sync)


# ----------------------------------------------------------------------------- GEMM peak
def sgemm_engine(backend, m, k, n):
    """``C = A @ B`` in float32 through the backend's BLAS (``out=``), to measure the machine's GEMM rate."""
    from gpubp import get_backend

    b = get_backend(backend)
    rng = np.random.default_rng(0)
    A = b.asarray(rng.normal(size=(m, k)).astype(np.float32))
    B = b.asarray(rng.normal(size=(k, n)).astype(np.float32))
    C = b.empty((m, n), np.float32)
    # the matmul runs on CuPy's current stream, not the training step's: wait for the whole device
    sync = b.xp.cuda.runtime.deviceSynchronize if b.name == "gpu" else b.synchronize
    return Engine("sgemm", b.name, lambda: b.xp.matmul(A, B, out=C), sync)


def cpu_sgemm_engines(m, k, n):
    """``C = A @ B`` in float32 through every BLAS on this machine: NumPy's OpenBLAS, oneMKL (through
    gpubp's direct CBLAS call, when installed) and PyTorch's (when installed); ``{name: Engine}``."""
    from gpubp.kernels import blas

    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    C = np.empty((m, n), np.float32)
    engines = {"openblas": Engine("sgemm-openblas", "cpu", lambda: np.matmul(A, B, out=C), lambda: None)}
    mkl = blas.load_mkl()
    if mkl is not None:
        gemm = mkl.gemm[np.dtype(np.float32)]
        engines["mkl"] = Engine("sgemm-mkl", "cpu", lambda: gemm(101, 111, 111, m, n, k, 1.0, A.ctypes.data, k,
                                                                 B.ctypes.data, n, 0.0, C.ctypes.data, n),
                                lambda: None)
    if has("torch"):
        import torch

        tA, tB, tC = torch.from_numpy(A), torch.from_numpy(B), torch.empty((m, n))
        engines["torch"] = Engine("sgemm-torch", "cpu", lambda: torch.matmul(tA, tB, out=tC), lambda: None)
    return engines
