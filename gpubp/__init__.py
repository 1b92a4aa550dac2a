"""gpubp: a vectorized backpropagation training engine for multi-layer perceptrons.

The same forward/backward/update code runs on NumPy (CPU, Numba-fused kernels)
or CuPy (CUDA GPU, fused elementwise kernels)::

    import gpubp as gb
    model = gb.Sequential([gb.Dense(64, activation="relu"), gb.Dense(10)], input_dim=784)
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=1e-3))
    history = model.fit(X, y, batch_size=256, epochs=20, validation_data=(Xv, yv))
"""

__version__ = "0.1.0"

from . import optim, schedules
from .backend import Backend, get_backend
from .callbacks import Callback, EarlyStopping, History
from .errors import (BackendUnavailableError, GpubpError, InvalidInputError, InvalidTypeError,
                     ModelFileError, NotCompiledError, TrainingDiverged, InsufficientMemory)
from .gradcheck import GradcheckResult, gradcheck
from .io import load_model as load
from .layers import Dense
from .losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential

__all__ = [
    "__version__", "optim", "schedules", "Backend", "get_backend", "Callback", "EarlyStopping", "History",
    "GpubpError", "InvalidInputError", "InvalidTypeError", "BackendUnavailableError", "NotCompiledError",
    "ModelFileError", "TrainingDiverged", "InsufficientMemory", "GradcheckResult", "gradcheck", "load", "Dense", "BinaryCrossEntropy",
    "MeanSquaredError", "SoftmaxCrossEntropy", "Sequential",
]
