"""FGSM and PGD: closed forms on linear models, budgets, keys, compiles, errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saljax import attacks


def _linear(num_classes=3, d=12, seed=0):
  w = jax.random.normal(jax.random.key(seed), (d, num_classes))
  return (lambda x: x.reshape(x.shape[0], -1) @ w), w


def _loss(f, x, y):
  return np.asarray(attacks.cross_entropy(f)(x, y))


def test_fgsm_linf_closed_form():
  f, w = _linear()
  x = jax.random.normal(jax.random.key(1), (5, 3, 4))
  y = jnp.array([0, 1, 2, 0, 1])
  p = jax.nn.softmax(f(x))
  g = (p - jax.nn.one_hot(y, 3)) @ w.T  # d CE / d x for a linear model
  out = attacks.fgsm(f, x, y, epsilon=0.1)
  np.testing.assert_allclose(out, x + 0.1 * jnp.sign(g).reshape(x.shape), atol=1e-6)


def test_pgd_l2_binary_linear_reaches_the_optimum():
  # Two classes: the loss depends on x only through x.(w_other - w_y), so the
  # maximizer over the L2 ball is x + eps * (w_other - w_y) / ||w_other - w_y||.
  f, w = _linear(num_classes=2)
  x = jax.random.normal(jax.random.key(2), (4, 12))
  y = jnp.array([0, 1, 1, 0])
  d = (w[:, 1 - y] - w[:, y]).T
  want = x + 0.5 * d / jnp.linalg.norm(d, axis=1, keepdims=True)
  out = attacks.pgd(f, x, y, epsilon=0.5, step_size=0.2, steps=8, norm="l2", random_start=False)
  np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_budget_and_bounds(norm):
  f, _ = _linear()
  x = jax.random.uniform(jax.random.key(3), (6, 3, 4))
  y = jnp.zeros(6, jnp.int32)
  eps = 0.05 if norm == "linf" else 0.3
  out = attacks.pgd(f, x, y, key=jax.random.key(0), epsilon=eps, steps=7, norm=norm,
                    bounds=(0.0, 1.0))
  delta = np.asarray(out - x).reshape(6, -1)
  if norm == "linf":
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(delta, axis=1).max() <= eps * (1 + 1e-5)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert (_loss(f, out, y) >= _loss(f, x, y) - 1e-6).all()


def _trained_mlp():
  """A small MLP trained on two Gaussian blobs in 8 dims (accuracy ~1)."""
  k = jax.random.split(jax.random.key(4), 4)
  x = jnp.concatenate([jax.random.normal(k[0], (64, 8)) + 0.6, jax.random.normal(k[1], (64, 8)) - 0.6])
  y = jnp.concatenate([jnp.zeros(64, jnp.int32), jnp.ones(64, jnp.int32)])
  params = {"w1": jax.random.normal(k[2], (8, 16)) / 3, "w2": jax.random.normal(k[3], (16, 2)) / 4}

  def apply(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  opt = optax.adam(0.05)
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean())(p)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s

  for _ in range(60):
    params, state = step(params, state)
  return (lambda z: apply(params, z)), x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.6), ("l2", 2.0)])
def test_pgd_beats_clean_and_fgsm_on_trained_model(norm, eps):
  f, x, y = _trained_mlp()
  clean = _loss(f, x, y)
  adv_f = attacks.fgsm(f, x, y, epsilon=eps, norm=norm)
  adv_p = attacks.pgd(f, x, y, key=jax.random.key(1), epsilon=eps, steps=20, norm=norm)
  assert (_loss(f, adv_p, y) >= clean - 1e-6).all()
  assert _loss(f, adv_p, y).mean() > clean.mean() + 0.1
  assert _loss(f, adv_p, y).mean() >= _loss(f, adv_f, y).mean() - 1e-3
  acc = lambda z: float((jnp.argmax(f(z), -1) == y).mean())
  assert acc(adv_p) < acc(x)


def test_same_key_identical_and_one_compile_per_shape():
  f, _ = _linear()
  x = jax.random.normal(jax.random.key(5), (4, 12))
  y = jnp.array([0, 1, 2, 0])
  a = attacks.pgd(f, x, y, key=jax.random.key(7), epsilon=0.1, steps=3)
  b = attacks.pgd(f, x, y, key=jax.random.key(7), epsilon=0.1, steps=3)
  c = attacks.pgd(f, x, y, key=jax.random.key(8), epsilon=0.1, steps=3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  counted = chex.assert_max_traces(attacks.pgd_perturb, n=1)
  core = jax.jit(lambda x, k, e: counted(lambda z: attacks.cross_entropy(f)(z, y), x, k, e, e / 2, steps=3))
  for eps in (0.1, 0.2, 0.3):  # epsilon is traced: no retrace
    core(x, jax.random.key(0), jnp.float32(eps))


def test_bad_inputs():
  f, _ = _linear()
  x = jnp.ones((2, 12))
  y = jnp.array([0, 1])
  with pytest.raises(ValueError, match="norm"):
    attacks.pgd(f, x, y, key=jax.random.key(0), epsilon=0.1, norm="l3")
  with pytest.raises(ValueError, match="key"):
    attacks.pgd(f, x, y, epsilon=0.1)
  with pytest.raises(ValueError, match="epsilon"):
    attacks.fgsm(f, x, y, epsilon=-1.0)
  with pytest.raises(TypeError, match="floating"):
    attacks.fgsm(f, jnp.ones((2, 12), jnp.int32), y, epsilon=0.1)
  with pytest.raises(ValueError, match="target"):
    attacks.fgsm(f, x, jnp.array([0, 5]), epsilon=0.1)
  with pytest.raises(ValueError, match="steps"):
    attacks.pgd(f, x, y, key=jax.random.key(0), epsilon=0.1, steps=0)
  with pytest.raises(ValueError, match="bounds"):
    attacks.pgd(f, x, y, key=jax.random.key(0), epsilon=0.1, bounds=(1.0, 0.0))
