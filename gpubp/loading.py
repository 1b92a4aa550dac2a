"""Rebuilding models from files: :func:`load_model` for model files, :func:`load_checkpoint_model` for checkpoints."""

from __future__ import annotations

import os

from .backend import get_backend
from .checkpoint import read_checkpoint, restore_checkpoint
from .data import StandardScaler
from .errors import ModelFileError
from .io import read_model_file
from .layers import layer_from_config
from .model import Sequential
from .optim import optimizer_from_config
from .output_paths import check_path


def model_from_config(config, backend, path, metrics=()):
    """Rebuild a (compiled, when it was) Sequential from a saved ``config``; ModelFileError when invalid."""
    try:
        layers = [layer_from_config(layer) for layer in config["layers"]]
        model = Sequential(layers, input_dim=config["input_dim"], backend=backend,
                           dtype=config["dtype"], seed=config["seed"])
        if config.get("loss"):
            optimizer = optimizer_from_config(config["optimizer"]) if config.get("optimizer") else "adam"
            model.compile(loss=config["loss"], optimizer=optimizer, metrics=metrics or config.get("metrics") or ())
        model.set_labels(config.get("feature_names"), config.get("classes"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path!r} has an invalid model configuration ({exc})") from None
    return model


def load_model(path: str | os.PathLike, backend: str = "auto") -> Sequential:
    """Rebuild a saved model on ``backend``, compiled again when it was compiled when saved.

    A ``path`` or ``backend`` of the wrong type or value raises InvalidTypeError or InvalidInputError
    naming it, before the file is read."""
    path, backend = check_path("path", path), get_backend(backend)
    config, params, weights, scaler = read_model_file(path)  # holds as many parameters as config's architecture
    model = model_from_config(config, backend, path)
    try:
        scaler = StandardScaler.from_dict(scaler) if scaler else None
        if params is not None:
            model.load_state_dict({"params": params}, scaler=scaler)
        else:
            model.set_weights(weights)
            model.set_scaler(scaler)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path!r} holds weights or a scaler that do not fit its architecture: {exc}") from None
    return model


def load_checkpoint_model(path: str | os.PathLike, backend: str = "auto") -> Sequential:
    """A new compiled model built from the checkpoint's configuration, with its state restored.

    Like :func:`gpubp.load`, for a checkpoint; ``model.checkpoint_info`` holds what
    :func:`gpubp.checkpoint.restore_checkpoint` returned (epoch, callbacks' state).
    """
    path, backend = check_path("path", path), get_backend(backend)
    meta, _ = read_checkpoint(path)
    model = model_from_config(meta["config"], backend, path, metrics=meta.get("metrics"))
    model.checkpoint_info = restore_checkpoint(path, model)
    return model
