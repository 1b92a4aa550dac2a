"""Activation functions understood by :class:`gpubp.Dense`.

The math lives in the fused kernels (``kernels.bias_activation_`` and
``kernels.activation_backward_``). Most derivatives are written in terms of the
activation's *output* y, so the forward pass keeps only its outputs; GELU and
SiLU are not invertible, so a layer with one of them also keeps its
pre-activation z (one more buffer of the batch plan, written by the same
forward pass):

==========  =======================================  ==============================
name        y = f(z)                                 f'(z)
==========  =======================================  ==============================
linear      z                                        1
sigmoid     1 / (1 + exp(-z))                        y (1 - y)
tanh        tanh(z)                                  1 - y^2
relu        max(z, 0)                                1 if y > 0 else 0
leaky_relu  z if z > 0 else slope z                  1 if y > 0 else slope
elu         z if z > 0 else alpha (exp(z) - 1)       1 if y > 0 else y + alpha
softplus    log(1 + exp(z))                          1 - exp(-y)
silu        z sigmoid(z)                             s (1 + z (1 - s)), s = sigmoid(z)
gelu        z/2 (1 + tanh(sqrt(2/pi)                 from z
            (z + 0.044715 z^3)))
gelu_exact  z Phi(z) = z/2 (1 + erf(z / sqrt(2)))    Phi(z) + z phi(z)
==========  =======================================  ==============================

``gelu`` is the tanh approximation (PyTorch's ``GELU(approximate="tanh")``, also
named ``gelu_tanh`` here); ``gelu_exact`` (or ``gelu_erf``) is the exact erf form,
PyTorch's default ``GELU()``. ``silu`` is also PyTorch's ``SiLU``.

Two activations take a parameter, a keyword of ``Dense`` named as in PyTorch:
``negative_slope`` of leaky_relu (default 0.01, as ``nn.LeakyReLU``) and
``alpha`` of elu (default 1.0, as ``nn.ELU``); both must be > 0, and are saved
with the model's configuration.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError
from .kernels.contract import ACTIVATION_ALPHA, NEEDS_PRE_ACTIVATION
from .validation import check_number

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "gelu_exact", "softplus", "silu")
ALIASES = {None: "linear", "linear": "linear", "identity": "linear", "sigmoid": "sigmoid",
           "logistic": "sigmoid", "tanh": "tanh", "relu": "relu", "leaky_relu": "leaky_relu",
           "leakyrelu": "leaky_relu", "elu": "elu", "gelu": "gelu", "gelu_tanh": "gelu", "gelu_exact": "gelu_exact",
           "gelu_erf": "gelu_exact", "softplus": "softplus", "silu": "silu"}
#: He initialisation before the rectifiers (ReLU and its smooth or leaky variants), Glorot before the others
DEFAULT_INIT = {"linear": "glorot", "sigmoid": "glorot", "tanh": "glorot", "relu": "he", "leaky_relu": "he",
                "elu": "he", "gelu": "he", "gelu_exact": "he", "softplus": "he", "silu": "he"}

#: The ``Dense`` keyword of each activation that takes a parameter (the kernels' ``alpha``), with PyTorch's
#: default: ``negative_slope`` of leaky_relu, ``alpha`` of elu.
PARAMETERS = {"leaky_relu": "negative_slope", "elu": "alpha"}
DEFAULTS = {name: ACTIVATION_ALPHA[name] for name in PARAMETERS}


def resolve_activation(name):
    """Return the canonical activation name for ``name`` (None means linear)."""
    if isinstance(name, str):
        key = name.lower()
    else:
        key = name
    try:
        return ALIASES[key]
    except (KeyError, TypeError):
        hint = ""
        if key == "softmax":
            hint = ("; softmax is folded into the 'softmax_cross_entropy' loss, so give the last "
                    "Dense no activation (linear) and compile with that loss")
        raise InvalidInputError(
            f"unknown activation {name!r}; valid names are {list(ACTIVATIONS)}{hint}"
        ) from None


def activation_parameter(activation, given):
    """The parameter of the canonical ``activation`` as a float (its default when not given), or None for an
    activation without one.

    ``given`` maps each keyword of :data:`PARAMETERS` to the value passed to ``Dense`` (None: not passed).
    A keyword passed for another activation, or a value that is not a finite number > 0 (and within
    float32's range, as the model may run in float32), raises InvalidInputError (InvalidTypeError for a
    value that is no number) naming the keyword.
    """
    for name, keyword in PARAMETERS.items():
        if given.get(keyword) is not None and name != activation:
            raise InvalidInputError(f"{keyword} is a parameter of activation={name!r} only, but the activation is "
                                    f"{activation!r}")
    keyword = PARAMETERS.get(activation)
    if keyword is None:
        return None
    value = given.get(keyword)
    if value is None:
        return DEFAULTS[activation]
    return check_number(keyword, value, minimum=0.0, strict=True, maximum=float(np.finfo(np.float32).max))


def keeps_pre_activation(activation):
    """Whether a layer with the canonical ``activation`` keeps its pre-activation for the backward pass."""
    return activation in NEEDS_PRE_ACTIVATION
