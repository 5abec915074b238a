"""saljax turns off XLA:CPU's YNNPACK reduction fusion, which returns garbage
for a sum of weighted gradients in this jaxlib (saljax/_xla_guard.py). Each
case runs in a fresh interpreter: XLA reads its flags once per process."""
import os
import subprocess
import sys

# The reproducer, without saljax's code: the weighted sum over a vmapped chunk
# of a gradient that does not change along the chunk (integrated gradients of
# a model linear in x). Prints the largest error against the exact answer.
REPRO = """
import jax, jax.numpy as jnp
w = jax.random.normal(jax.random.key(0), (3, 5))
x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
t = jnp.array([0, 1, 2, 3])
g = jax.grad(lambda x: jnp.take_along_axis(x.mean((1, 2)) @ w, t[:, None], 1).sum())
sum_ = jax.jit(lambda x, a, c: jax.vmap(lambda a, c: c * g(a * x))(a, c).sum(0))
a = jnp.linspace(0.1, 1.0, 7)
print(float(jnp.abs(sum_(x, a, jnp.full(7, 1 / 7)) - g(x)).max()))
"""


def _run(code, env_flags=None):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if env_flags is not None:
    env["XLA_FLAGS"] = env_flags
  env["JAX_PLATFORMS"] = "cpu"
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  return res


def test_importing_saljax_first_makes_the_sum_exact():
  res = _run("import saljax\n" + REPRO + "print(saljax._xla_guard.STATUS)")
  err, status = res.stdout.split()
  assert status == "set"
  assert float(err) < 1e-6, res.stdout


def test_integrated_gradients_of_a_linear_model_is_exact_at_every_step_count():
  code = """
import saljax, jax, jax.numpy as jnp
w = jax.random.normal(jax.random.key(0), (3, 5))
f = jax.tree_util.Partial(lambda w, x: x.mean((1, 2)) @ w, w)
x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
t = jnp.array([0, 1, 2, 3])
want = x * (w[:, t].T / 64)[:, None, None, :]
print(max(float(jnp.abs(saljax.integrated_gradients(f, x, t, steps=s) - want).max())
          for s in (4, 7, 50)))
"""
  assert float(_run(code).stdout.split()[-1]) < 1e-6


def test_a_user_choice_is_kept_and_a_late_import_warns():
  res = _run("import saljax; print(saljax._xla_guard.STATUS)",
             env_flags="--xla_cpu_experimental_ynn_fusion_type=")
  assert res.stdout.split()[-1] == "user"
  res = _run("import jax.numpy as jnp; jnp.ones(2).block_until_ready()\n"
             "import warnings; warnings.simplefilter('always')\n"
             "import saljax; print(saljax._xla_guard.STATUS)")
  assert res.stdout.split()[-1] == "late"
  assert "YNNPACK" in res.stderr
