"""Activation functions understood by :class:`gpubp.Dense`.

The math lives in the fused kernels (``kernels.bias_activation_`` and
``kernels.activation_backward_``); every derivative is written in terms of the
activation's *output* y, so the forward pass keeps only its outputs:

=========  ======================  ==================
name       y = f(z)                f'(z) from y
=========  ======================  ==================
linear     z                       1
sigmoid    1 / (1 + exp(-z))       y * (1 - y)
tanh       tanh(z)                 1 - y^2
relu       max(z, 0)               1 if y > 0 else 0
=========  ======================  ==================
"""

from __future__ import annotations

from .errors import InvalidInputError

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu")
ALIASES = {None: "linear", "linear": "linear", "identity": "linear", "sigmoid": "sigmoid",
           "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
DEFAULT_INIT = {"linear": "glorot", "sigmoid": "glorot", "tanh": "glorot", "relu": "he"}


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
