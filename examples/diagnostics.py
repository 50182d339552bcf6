"""Example user diagnostics (README, "Scripting custom diagnostics").

Each is a function of the step's context ``ctx`` (see ``training.Context``); the same function
runs during training (``train(config, metrics={...})``) and post hoc
(``analysis.map_checkpoints`` or ``dynloss map RUN.nc examples/diagnostics.py:grad_cosine``).
"""

import jax
import jax.numpy as jnp
import optax


def grad_cosine(ctx):
    """Cosine between the gradients of the dynamical and of the static loss."""
    g_static = jax.grad(ctx.static_loss_fn)(ctx.params)
    return optax.tree.vdot(ctx.grads, g_static) / (
        optax.tree.norm(ctx.grads) * optax.tree.norm(g_static)
    )


def per_class_accuracy(ctx):
    """Training accuracy of each class, shape (C,)."""
    pred = jnp.argmax(ctx.apply_fn(ctx.params, ctx.x), axis=-1)
    onehot = jax.nn.one_hot(ctx.y, ctx.gamma.shape[0])
    return (onehot * (pred == ctx.y)[:, None]).sum(0) / onehot.sum(0)
