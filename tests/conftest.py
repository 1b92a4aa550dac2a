"""Shared fixtures: the backends to run on, and small data sets."""

import pytest

from helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    """Runs a test once per backend; the GPU run skips with the reason when CuPy or a device is missing."""
    return request.param


@pytest.fixture(scope="session")
def moons():
    """Two moons (2000 samples, noise 0.2, seed 0), standardized, 80/20 split."""
    from gpubp.data import StandardScaler, load_builtin, train_test_split

    X, y = load_builtin("moons", 2000, 0.2, 0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, 0.2, seed=0)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr), scaler.transform(Xte), ytr, yte


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits scaled to [0, 1], stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
