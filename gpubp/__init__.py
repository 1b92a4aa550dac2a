"""gpubp: a vectorized backpropagation training engine for multi-layer perceptrons.

The same forward/backward/update code runs on NumPy (CPU, Numba-fused kernels)
or CuPy (CUDA GPU, fused elementwise kernels)::

    import gpubp as gb
    model = gb.Sequential([gb.Dense(64, activation="relu"), gb.Dense(10)], input_dim=784)
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=1e-3))
    history = model.fit(X, y, batch_size=256, epochs=20, validation_data=(Xv, yv))
"""

from . import losses, metrics, optim, schedules
from .backend import Backend, get_backend, get_float32_matmul_precision, set_float32_matmul_precision
from .callbacks import (Callback, CallbackList, CSVLogger, EarlyStopping, GradientMonitor, History,
                        LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau)
from .divergence import Divergence
from .errors import (BackendUnavailableError, DistributedAbort, GpubpError, InvalidInputError, InvalidTypeError,
                     ModelFileError, NotCompiledError, TrainingDiverged, InsufficientMemory)
from .gradcheck import GradcheckResult, gradcheck
from .loading import load_model as load
from .layers import Dense, Dropout
from .losses import BinaryCrossEntropy, Huber, MeanAbsoluteError, MeanSquaredError, SoftmaxCrossEntropy
from .lr_finder import LRFinderResult, lr_find
from .model import Sequential
from .version import __version__

__all__ = [
    "__version__", "losses", "metrics", "optim", "schedules", "Backend", "get_backend", "set_float32_matmul_precision",
    "get_float32_matmul_precision", "Callback", "CallbackList", "CSVLogger", "EarlyStopping", "GradientMonitor", "History",
    "LearningRateScheduler", "ModelCheckpoint", "ReduceLROnPlateau", "Divergence",
    "GpubpError", "InvalidInputError", "InvalidTypeError", "BackendUnavailableError", "NotCompiledError",
    "ModelFileError", "TrainingDiverged", "InsufficientMemory", "DistributedAbort", "GradcheckResult", "gradcheck", "load", "Dense", "Dropout",
    "BinaryCrossEntropy", "Huber", "MeanAbsoluteError", "MeanSquaredError", "SoftmaxCrossEntropy", "Sequential", "lr_find", "LRFinderResult",
]
