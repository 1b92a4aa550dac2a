"""Memory of the largest cell: peak RSS of a width-1024, depth-8, batch-8192 step against what the
math needs (parameters + optimizer state + activations + the batch), measured in a fresh process.

The baseline is taken after the user's (X, y) exist, so what is counted is what gpubp allocates:
parameters, gradients, optimizer state, activations, the gathered batch and the backward scratch.
"""

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, numpy as np, gpubp as gb
def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
# warm up imports and kernel compilation on a tiny model, then take the baseline
tiny = gb.Sequential([gb.Dense(4, activation="relu"), gb.Dense(3)], input_dim=5, backend="cpu")
tiny.compile(loss="softmax_cross_entropy", optimizer="{opt}")
tiny.fit(np.zeros((8, 5), np.float32), np.zeros(8, np.int64), epochs=1, verbose=0)
B, n_in, width, depth, n_out = 8192, 784, 1024, 8, 10
X = np.random.default_rng(0).normal(size=(B, n_in)).astype(np.float32)  # the user's data: not counted
y = np.random.default_rng(0).integers(0, n_out, size=B)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: compilation peaks do not count
base = status_mb("VmRSS")
model = gb.Sequential([gb.Dense(width, activation="relu") for _ in range(depth)] + [gb.Dense(n_out)],
                      input_dim=n_in, backend="cpu", seed=0)
model.compile(loss="softmax_cross_entropy", optimizer="{opt}")
model.fit(X, y, batch_size=B, epochs=2, verbose=0)
params = model.count_params()
state = params * len(model.optimizer.state_names)
activations = B * (depth * width + n_out)
need = 4 * (params + state + activations + B * n_in) / 2**20
print(json.dumps({{"peak_mb": status_mb("VmHWM") - base, "need_mb": need}}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to reset the peak RSS")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_peak_memory_of_the_largest_step(benchmark, optimizer):
    benchmark.group = "memory width=1024 depth=8 batch=8192"
    out = subprocess.run([sys.executable, "-c", PROBE.format(opt=optimizer)], capture_output=True,
                         text=True, check=True, timeout=600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    benchmark.extra_info.update({"optimizer": optimizer, **result, "ratio": result["peak_mb"] / result["need_mb"]})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert result["peak_mb"] > 0.9 * result["need_mb"]  # the probe measured the real allocation
