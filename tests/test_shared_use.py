"""One model shared by threads, asked about many batch sizes, and evaluated on different kinds of targets."""

import threading

import numpy as np

import gpubp as gb
from gpubp.model import MAX_INFERENCE_PLANS, MAX_TRAINING_PLANS


def make_model(loss="softmax_cross_entropy", n_out=4):
    model = gb.Sequential([gb.Dense(64, activation="tanh"), gb.Dense(32, activation="relu"), gb.Dense(n_out)],
                          input_dim=16, backend="cpu", seed=0)
    return model.compile(loss=loss, optimizer="adam")


def test_predict_and_evaluate_from_many_threads_give_the_single_thread_results():
    model = make_model()
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 300)), 16)) for _ in range(24)]
    labels = [rng.integers(0, 4, size=len(x)) for x in inputs]
    expected = [model.predict(x) for x in inputs]
    expected_eval = [model.evaluate(x, t, batch_size=64) for x, t in zip(inputs, labels)]
    wrong = []

    def worker(offset):
        for k in range(100):
            i = (offset + k) % len(inputs)
            if not np.array_equal(model.predict(inputs[i], batch_size=64), expected[i]):
                wrong.append(("predict", i))
            if k % 10 == 0 and model.evaluate(inputs[i], labels[i], batch_size=64) != expected_eval[i]:
                wrong.append(("evaluate", i))

    threads = [threading.Thread(target=worker, args=(t * 3,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, f"{len(wrong)} wrong results, first {wrong[:3]}"


def test_plan_caches_stay_bounded():
    model = make_model()
    rng = np.random.default_rng(0)
    for batch in range(1, 60):
        X, y = rng.normal(size=(batch, 16)), rng.integers(0, 4, size=batch)
        model.train_on_batch(X, y)
        model.predict(X)
        model.evaluate(X, y)
    assert len(model._plans) == MAX_TRAINING_PLANS
    assert len(model._per_thread.plans) == MAX_INFERENCE_PLANS


def test_mse_reports_accuracy_for_labels_only_whatever_came_before():
    """The loss keeps no state: accuracy follows the targets of each call."""
    model = make_model("mse", n_out=3)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 16))
    assert model.evaluate(X, rng.integers(0, 3, size=50))["accuracy"] is not None
    assert model.evaluate(X, rng.normal(size=(50, 3)))["accuracy"] is None
    history = model.fit(X, rng.normal(size=(50, 3)), epochs=1, verbose=0, validation_data=(X, rng.normal(size=(50, 3))))
    assert "val_accuracy" not in history.history
