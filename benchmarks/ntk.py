"""Time and peak memory of the empirical NTK and of per-step NTK tracking (prints a table).

    .venv/bin/python benchmarks/ntk.py            # every case, one subprocess per case
    .venv/bin/python benchmarks/ntk.py --case spiral-1000-jacobian   # one case, JSON line

Cases: the spiral kernel (300 points, 3 classes: a 900 x 900 matrix) of a one-hidden-layer
ReLU MLP (standard parameterisation, 2-D input) at widths 100 and 1000 for each native
implementation; a 1000-sample batch through a small conv net (8x8x1 inputs, one 3x3 conv with
16 channels, global average pool, dense to 3 classes); and the cost of one tracked step
(``ntk_tracker(1)`` + a GD step) relative to a plain GD step, inside ``lax.scan``.
Everything runs in float32 (the training default). "peak MB" is the subprocess's max RSS
minus that of a baseline subprocess that builds the same model and data and compiles the same
kernel program without running it (so XLA's compiler peak cancels); "XLA MB" is what the
compiled kernel computation itself allocates (temporaries + output, ``memory_analysis()``).
Targets: the width-1000 spiral kernel in < 1 s after compilation; peak memory within 2x of the
kernel plus one block of per-sample Jacobians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time

# First, as benchmarks/curvature.py would shadow the curvature package (see _unshadow.py);
# dask's worker processes and `python -m` run without this folder on the path.
with contextlib.suppress(ModuleNotFoundError):
    import _unshadow  # noqa: F401
import jax
import jax.numpy as jnp

from curvature import _ntk, empirical_ntk, ntk_tracker

SPIRAL_N, CLASSES = 300, 3
CONV_N, CONV_CHANNELS = 1000, 16
CONV_BATCH = 250
NTVP_BATCH = 50
TRACK_STEPS = 50


def spiral(n_per_class: int = 100, classes: int = 3) -> jax.Array:
    """The authors' spiral arms (r = linspace(0, 1), theta with noise), as plain JAX."""
    r = jnp.linspace(0.0, 1.0, n_per_class)
    points = []
    for j in range(classes):
        noise = 0.2 * jax.random.normal(jax.random.PRNGKey(j), (n_per_class,))
        t = jnp.linspace(2 * jnp.pi / 3 * j, 2 * jnp.pi / 3 * j + 4 * jnp.pi, n_per_class) + noise
        points.append(jnp.stack([r * jnp.cos(t), r * jnp.sin(t)], axis=1))
    return jnp.concatenate(points)


def mlp(width: int):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {
        "w1": jax.random.normal(k1, (2, width)) / jnp.sqrt(2.0),
        "b1": jnp.zeros((width,)),
        "w2": jax.random.normal(k2, (width, CLASSES)) / jnp.sqrt(width),
        "b2": jnp.zeros((CLASSES,)),
    }

    def apply(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    return params, apply


def conv_net():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {
        "conv": jax.random.normal(k1, (3, 3, 1, CONV_CHANNELS)) / 3.0,
        "conv_b": jnp.zeros((CONV_CHANNELS,)),
        "dense": jax.random.normal(k2, (CONV_CHANNELS, CLASSES)) / jnp.sqrt(CONV_CHANNELS),
        "dense_b": jnp.zeros((CLASSES,)),
    }

    def apply(p, x):
        h = jax.lax.conv_general_dilated(
            x, p["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.nn.relu(h + p["conv_b"]).mean(axis=(1, 2)) @ p["dense"] + p["dense_b"]

    return params, apply


def setup(case: str):
    """Return (apply, params, x, implementation, batch_size) for a kernel case."""
    kind, *rest = case.split("-")
    if kind == "spiral":
        width, impl = int(rest[0]), rest[1]
        params, apply = mlp(width)
        x = spiral()
    else:
        impl = rest[0]
        params, apply = conv_net()
        x = jax.random.normal(jax.random.PRNGKey(1), (CONV_N, 8, 8, 1))
    batch = {"jacobian": None if kind == "spiral" else CONV_BATCH, "ntvp": NTVP_BATCH}[impl]
    return apply, params, x, impl, batch


def num_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def target_bytes(case: str) -> int:
    """Kernel plus one block of per-sample Jacobians (both x1 and x2 blocks), float32."""
    _, params, x, _, batch = setup(case)
    n = x.shape[0]
    block = n if batch is None else 2 * batch
    return 4 * (n * n * CLASSES * CLASSES + block * CLASSES * num_params(params))


def _lowered(apply, params, x, impl: str, batch: int | None):
    """The kernel program ``empirical_ntk`` runs for this case, lowered (not compiled)."""
    size = x.shape[0] if batch is None else batch
    return _ntk._native_ntk.lower(
        apply,
        params,
        x,
        None,
        implementation=impl,
        trace=False,
        diag_out=False,
        diag_batch=False,
        size1=size,
        size2=size,
    )


def run_kernel(case: str, baseline: bool) -> dict:
    apply, params, x, impl, batch = setup(case)
    if baseline:
        # Same model, data and compiled kernel program, never executed: the difference in
        # max RSS is what running the kernel adds (XLA's compiler peak cancels).
        jax.block_until_ready(apply(params, x))
        _lowered(apply, params, x, impl, batch).compile()
        return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    t0 = time.perf_counter()
    kernel = empirical_ntk(apply, params, x, implementation=impl, batch_size=batch)
    kernel.block_until_ready()
    first = time.perf_counter() - t0
    shape = list(kernel.shape)
    del kernel  # otherwise two kernels are alive during the timed calls (and in the RSS peak)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        empirical_ntk(apply, params, x, implementation=impl, batch_size=batch).block_until_ready()
        times.append(time.perf_counter() - t0)
    lowered = _lowered(apply, params, x, impl, batch)
    mem = lowered.compile().memory_analysis()
    xla = None if mem is None else mem.temp_size_in_bytes + mem.output_size_in_bytes
    return {
        "xla": xla,
        "first": first,
        "time": min(times),
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "shape": shape,
        "params": num_params(params),
    }


def run_tracking(width: int) -> dict:
    params, apply = mlp(width)
    x = spiral()
    target = jax.nn.one_hot(jnp.repeat(jnp.arange(CLASSES), SPIRAL_N // CLASSES), CLASSES)
    tracker = ntk_tracker(1)

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((apply(p, x) - target) ** 2, axis=1))

    def plain(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p)), None

    def tracked(carry, _):
        p, state = carry
        track, state = tracker.update(apply, p, x, state)
        return (plain(p, None)[0], state), track.restarted

    plain_run = jax.jit(lambda p: jax.lax.scan(plain, p, None, length=TRACK_STEPS))
    tracked_run = jax.jit(lambda c: jax.lax.scan(tracked, c, None, length=TRACK_STEPS))
    state = tracker.init(apply, params, x, jax.random.PRNGKey(0))
    out = {}
    for name, fn, arg in (("plain", plain_run, params), ("tracked", tracked_run, (params, state))):
        jax.block_until_ready(fn(arg))
        t0 = time.perf_counter()
        result = jax.block_until_ready(fn(arg))
        out[name] = (time.perf_counter() - t0) / TRACK_STEPS
        if name == "tracked":
            out["restarts"] = int(result[1].sum())
    return out


KERNEL_CASES = [
    "spiral-100-jacobian",
    "spiral-100-ntvp",
    "spiral-1000-jacobian",
    "spiral-1000-ntvp",
    "conv-jacobian",
    "conv-ntvp",
]


def subprocess_json(*args: str) -> dict:
    cmd = [sys.executable, __file__, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="run one kernel case and print JSON")
    parser.add_argument("--baseline", action="store_true", help="model and data only")
    parser.add_argument("--tracking", type=int, help="run the tracking case at this width")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_kernel(args.case, args.baseline)))
        return
    if args.tracking:
        print(json.dumps(run_tracking(args.tracking)))
        return

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, float32")
    header = (
        f"{'case':22s} {'P':>7s} {'kernel':>16s} {'compile+run s':>13s} {'run s':>8s} "
        f"{'peak MB':>8s} {'XLA MB':>7s} {'target MB':>9s} {'peak/tgt':>8s} {'XLA/tgt':>7s} "
        f"{'time/1s':>7s}"
    )
    print(header)
    print("-" * len(header))
    for case in KERNEL_CASES:
        base = subprocess_json("--case", case, "--baseline")["rss"]
        res = subprocess_json("--case", case)
        peak = (res["rss"] - base) / 2**20
        target = target_bytes(case) / 2**20
        shape = "x".join(str(s) for s in res["shape"])
        time_ratio = f"{res['time']:.2f}" if case == "spiral-1000-jacobian" else "-"
        xla = float("nan") if res["xla"] is None else res["xla"] / 2**20
        print(
            f"{case:22s} {res['params']:7d} {shape:>16s} {res['first']:13.2f} "
            f"{res['time']:8.3f} {peak:8.1f} {xla:7.1f} {target:9.1f} {peak / target:8.2f} "
            f"{xla / target:7.2f} {time_ratio:>7s}"
        )
    print()
    for width in (100, 1000):
        res = subprocess_json("--tracking", str(width))
        print(
            f"tracking width {width}: plain GD step {1e3 * res['plain']:.2f} ms, "
            f"tracked step (ntk_tracker(1) + GD) {1e3 * res['tracked']:.2f} ms, "
            f"ratio {res['tracked'] / res['plain']:.1f}x, restarts {res['restarts']}/{TRACK_STEPS}"
        )


if __name__ == "__main__":
    main()
