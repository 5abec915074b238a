"""The attribution-prior example (Erion et al. 2021): expected gradients inside
one jitted training step, differentiated with respect to traced parameters,
makes the held-out maps smoother at about the same accuracy."""
import json

from experiments import attribution_prior as ap


def test_total_variation_prior_smooths_the_maps(tmp_path):
  res = ap.run(str(tmp_path), steps=200, lam=3.0, seed=0)
  base, prior = res["baseline"], res["prior"]
  # One compilation of the train step, with the explainer inside it.
  assert base["train_step_traces"] == 1 and prior["train_step_traces"] == 1
  assert base["accuracy"] > 0.9, res
  assert prior["accuracy"] > base["accuracy"] - 0.03, res
  # The penalized quantity falls severalfold; relative to the map's magnitude
  # it still falls (the prior does not just shrink the map).
  assert prior["tv"] < base["tv"] / 2, res
  assert prior["relative_tv"] < base["relative_tv"], res
  assert json.loads((tmp_path / "results.json").read_text())["tv_ratio"] == res["tv_ratio"]
  assert (tmp_path / "maps.png").stat().st_size > 10_000


def test_total_variation_of_a_constant_map_is_zero_and_of_a_checkerboard_is_two():
  import jax.numpy as jnp
  flat = jnp.ones((1, 4, 4, 1))
  checker = (jnp.indices((4, 4)).sum(0) % 2).astype(jnp.float32)[None, ..., None]
  assert float(ap.total_variation(flat)[0]) == 0.0
  assert abs(float(ap.total_variation(checker)[0]) - 2.0) < 1e-6
