"""Prompt-CAM (saljax.models.prompt_cam, saljax.explainers.prompts): prompts
trained through experiments.train on a frozen ViT trained on BlockMNIST-style
data (24x12 images, one module-scoped training), the maps' shape and
normalization, one compile, chunked == unchunked, 8 devices == 1, clear
errors, and the maps pointing at the digit block (docs/prompt_cam.md)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import saljax
from experiments import _common as C
from experiments import train
from experiments.configs import blockmnist_standard, prompt_cam_blockmnist
from saljax.data import blockmnist
from saljax.explainers import attention, prompts
from saljax.models import prompt_cam as pc
from saljax.models.vit import ViT

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 12                      # BlockMNIST blocks of 12 px: images 24x12
SHAPE = (2 * SIZE, SIZE, 1)
GRID = (6, 3)                  # patch 4: the digit block is 3 patch rows


def _config(arg, **train_overrides):
  c = prompt_cam_blockmnist.get_config(arg)
  c.data.image_size = (2 * SIZE, SIZE)
  c.model.patch_size = 4
  c.model.width = 32
  c.model.depth = 2
  c.model.num_heads = 2
  c.train.batch_size = 32
  c.train.warmup_steps = 10
  c.train.log_every = 50
  c.train.eval_examples = 64
  c.train.progress_every_s = 0.0
  c.train.async_checkpoint = False
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One backbone ViT, then prompts on it, both through experiments.train."""
  root = tmp_path_factory.mktemp("pcam")
  vit_dir, pcam_dir = str(root / "vit"), str(root / "pcam")
  train.run(_config("backbone", steps=150, eval_every=150, checkpoint_every=150,
                    learning_rate=2e-3), vit_dir)
  pcfg = _config("prompts", steps=100, eval_every=100, checkpoint_every=100)
  pcfg.model.backbone_workdir = vit_dir
  out = train.run(pcfg, pcam_dir)
  vit = train.load_backbone(pcfg, SHAPE, 10)
  model = C.build_model(pcfg, 10, SHAPE)
  init = C.init_state(model, C.make_optimizer(pcfg.train), C.init_key(pcfg.seed), SHAPE)
  params = jax.device_get(out["state"]["params"])
  tapped = saljax.from_linen(model.module, {"params": params},
                             example=jax.ShapeDtypeStruct((1,) + SHAPE, jnp.float32))
  test = blockmnist.load("test", size=SIZE)
  return dict(out=out, vit=vit, init=jax.device_get(init["params"]), params=params,
              tapped=tapped, module=model.module, test=test, pcfg=pcfg)


def _leaves(tree):
  return jax.tree_util.tree_leaves(jax.device_get(tree))


def test_backbone_frozen_and_prompts_trained(trained):
  params, vit = trained["params"], jax.device_get(trained["vit"].variables["params"])
  backbone = sorted(k for k in params if k not in pc.TRAINABLE)
  assert backbone == sorted(k for k in vit if k != "head")
  for k in backbone:  # bit-identical after 100 AdamW steps on the prompts
    for a, b in zip(_leaves(params[k]), _leaves(vit[k])):
      np.testing.assert_array_equal(a, b)
  for k in pc.TRAINABLE:
    moved = max(float(np.abs(a - b).max()) for a, b in zip(_leaves(params[k]),
                                                          _leaves(trained["init"][k])))
    assert moved > 1e-3, k
  assert params["prompts"].shape == (2, 10, 32)  # deep: one set per block
  # The prompts learned the task on the frozen features (10 classes: chance 0.1).
  assert trained["out"]["metrics"]["eval_accuracy"] > 0.3


def test_maps_shape_and_normalization(trained):
  f, x = trained["tapped"], jnp.asarray(trained["test"]["image"][:5])
  t = jnp.asarray(trained["test"]["label"][:5])
  m = saljax.prompt_cam(f, x, t)
  assert m.shape == (5,) + GRID
  assert float(m.min()) >= 0.0
  np.testing.assert_allclose(np.asarray(m.sum((1, 2))), 1.0, rtol=1e-5)
  heads = saljax.prompt_cam(f, x, t, per_head=True)
  assert heads.shape == (5, 2) + GRID
  np.testing.assert_allclose(np.asarray(heads.sum((2, 3))), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(heads.mean(1)), np.asarray(m), rtol=1e-5, atol=1e-7)
  # Unnormalized: the raw probabilities of prompt t's row over the patches
  # (tokens: 10 prompts, the class token, then 18 patches).
  raw = saljax.prompt_cam(f, x, t, per_head=True, normalize=False)
  probs = np.asarray(f(x)[1]["blocks_1/attn/probs"])
  want = probs[np.arange(5), :, np.asarray(t), 11:].reshape(5, 2, *GRID)
  np.testing.assert_allclose(np.asarray(raw), want, rtol=1e-5, atol=1e-7)
  assert float(raw.sum((2, 3)).max()) < 1.0
  # Another target gives another map: the maps are class-specific.
  other = saljax.prompt_cam(f, x, (t + 1) % 10)
  assert float(jnp.abs(other - m).max()) > 1e-3


def test_one_compile_and_chunked_equals_unchunked(trained):
  f, test = trained["tapped"], trained["test"]
  x, t = jnp.asarray(test["image"][:7]), jnp.asarray(test["label"][:7])
  whole = saljax.prompt_cam(f, x, t)
  n0 = prompts._prompt_cam._cache_size()
  saljax.prompt_cam(f, x + 0.1, t)
  saljax.prompt_cam(f, x * 0.5, (t + 3) % 10)
  assert prompts._prompt_cam._cache_size() == n0  # same shape: no new compile
  chunked = saljax.prompt_cam(f, x, t, batch_size=3)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-5, atol=1e-7)
  assert prompts._prompt_cam._cache_size() == n0 + 1  # the chunked program, once


def test_refuses_other_models_and_bad_options(trained):
  x = jnp.asarray(trained["test"]["image"][:2])
  tapped_vit = trained["vit"].tapped
  with pytest.raises(ValueError, match=r"^prompt_cam: expected a Prompt-CAM model .*no layer 'prompt_head'"):
    saljax.prompt_cam(tapped_vit, x, jnp.array([0, 1]))
  with pytest.raises(TypeError, match=r"^prompt_cam: expected a tapped model"):
    saljax.prompt_cam(trained["tapped"].logits, x, jnp.array([0, 1]))
  with pytest.raises(ValueError, match=r"^prompt_cam: target: expected class indices in \[0, 10\)"):
    saljax.prompt_cam(trained["tapped"], x, jnp.array([0, 10]))
  with pytest.raises(ValueError, match=r"not an attention-probability layer"):
    saljax.prompt_cam(trained["tapped"], x, jnp.array([0, 1]), layer="blocks_1")
  vit_params = jax.device_get(trained["vit"].variables["params"])
  narrow = {**vit_params, "pos_embed": np.zeros((1, 19, 16), np.float32)}
  with pytest.raises(ValueError, match=r"vit_params: .*\['pos_embed'\]: expected \(\(1, 19, 32\)"):
    pc.with_backbone(trained["params"], narrow)
  with pytest.raises(ValueError, match=r"vit_params: expected the ViT parameters"):
    pc.with_backbone(trained["params"], {k: v for k, v in vit_params.items() if k != "norm"})


def test_config_errors_before_work(tmp_path, trained):
  c = _config("prompts", steps=1)
  with pytest.raises(ValueError, match=r"model.backbone_workdir: expected the workdir"):
    train.run(c, str(tmp_path / "a"))
  c.model.backbone_workdir = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match=r"config.train.json"):
    train.run(c, str(tmp_path / "b"))
  c = _config("prompts", steps=1, trainable=("prompts",))
  c.model.backbone_workdir = trained["pcfg"].model.backbone_workdir
  with pytest.raises(ValueError, match=r"train.trainable: Prompt-CAM trains"):
    train.run(c, str(tmp_path / "c"))
  mlp = blockmnist_standard.get_config()
  mlp.model.width, mlp.model.depth, mlp.train.steps = 4, 1, 1
  mlp.train.trainable = ("nope",)
  with pytest.raises(ValueError, match=r"train.trainable: \['nope'\] are not parameters of mlp"):
    train.run(mlp, str(tmp_path / "d"))


def _pointing(maps, top):
  """Share of maps [B, h, w] whose maximum lies in the digit block's rows."""
  maps = np.asarray(maps)
  rows = np.argmax(maps.reshape(len(maps), -1), axis=1) // maps.shape[2]
  return float(((rows < maps.shape[1] // 2) == np.asarray(top)).mean())


def class_token_attention(f, x):
  """The class token's last-block attention (saljax.explainers.attention) on
  the non-square grid: the public function reads square grids only, so its
  core is called here."""
  last = [n for n in f.layer_names if n.endswith("attn/probs")][-1]
  q = jnp.zeros((x.shape[0],), jnp.int32)
  return attention._token_attention(f, x, q, last, GRID + (1,), False)


def test_points_into_the_digit_block(trained):
  """The weaker claim of docs/prompt_cam.md: on held-out images Prompt-CAM
  points into the digit block well above chance (0.5: half the digits are on
  top) and more often than the class token's own last-layer attention.
  Attention rollout of this supervised ViT does better still (about 1.0 here
  and at 56x28). In the paper's setting, a backbone pre-trained without labels
  (MAE, experiments.pretrain_mae), the issue's claim held for one MAE seed and
  failed for another at 56x28 (docs/prompt_cam.md). At this size the prompts
  on such a backbone do not learn in a test's budget. It is not asserted."""
  test = trained["test"]
  x, t = jnp.asarray(test["image"]), jnp.asarray(test["label"])
  pcam = _pointing(saljax.prompt_cam(trained["tapped"], x, t), test["signal_top"])
  cls = _pointing(class_token_attention(trained["vit"].tapped, x), test["signal_top"])
  # 359 images: a rate's standard error is about 0.026; measured 0.75 and 0.60.
  assert pcam > 0.65, (pcam, cls)
  assert pcam > cls + 0.05, (pcam, cls)


def test_eight_devices_equal_one():
  res = subprocess.run([sys.executable, os.path.join(HERE, "_sharded_prompt_cam.py")],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) == {"mean", "chunked_per_head", "greedy"}
  assert max(diffs.values()) < 1e-6, diffs


def test_shallow_variant_carries_one_prompt_set():
  m = pc.prompt_cam("vit_tiny", 3, variant="shallow", patch=4, dim=16, depth=3, num_heads=2,
                    mlp_dim=32)
  x = jnp.zeros((2, 8, 4, 1))
  v = m.init(jax.random.key(0), x)
  assert v["params"]["prompts"].shape == (1, 3, 16)
  f = saljax.from_linen(m, v, example=x)
  shapes = f.activation_shapes(x)
  # 3 prompts + class token + 2 patches in every block.
  assert all(shapes[f"blocks_{i}/attn/probs"].shape == (2, 2, 6, 6) for i in range(3))
  assert saljax.prompt_cam(f, x, jnp.array([0, 2])).shape == (2, 2, 1)
  with pytest.raises(ValueError, match=r"variant: expected one of"):
    pc.prompt_cam("vit_tiny", 3, variant="middle")


# ---------------------------------------------------------------------------
# Greedy head selection (the paper's trait identification).

GH = 4  # heads of the known-answer model


@pytest.fixture(scope="module")
def four_heads():
  """A random Prompt-CAM with 4 heads, and a copy whose last block keeps only
  head 2's output (the other heads' rows of the output projection are 0)."""
  m = pc.prompt_cam("vit_tiny", 3, patch=4, dim=16, depth=2, num_heads=GH, mlp_dim=32)
  x = jax.random.uniform(jax.random.key(1), (6, 8, 4, 1))
  v = jax.device_get(m.init(jax.random.key(0), x[:1]))
  only = jax.tree_util.tree_map(np.array, v)
  kernel = only["params"]["blocks_1"]["attn"]["out"]["kernel"]  # [heads, head_dim, D]
  kernel[[0, 1, 3]] = 0.0
  example = x[:1]
  return dict(x=x, f=saljax.from_linen(m, v, example=example),
              only=saljax.from_linen(m, only, example=example))


@jax.jit
def _blurred_probs(f, xi, ti, mask):
  """The target's softmax probability with the target prompt's last-block row
  made uniform in the heads where `mask` [cand, heads] is 1 (the official code
  zeroes those logits), one candidate per row; written out per candidate."""
  layer = "blocks_1/attn/probs"
  a = f(xi[None])[1][layer]                                  # [1, heads, T, T]
  uniform = jnp.zeros_like(a).at[0, :, ti].set(1.0 / a.shape[-1] - a[0, :, ti])

  def one(m):
    logits = f(xi[None], {layer: uniform * m[None, :, None, None]})[0][0]
    return jax.nn.softmax(logits)[ti]

  return jax.lax.map(one, mask)


def _blurred_prob(f, xi, ti, blur):
  return float(_blurred_probs(f, xi, ti, jnp.zeros((1, GH)).at[0, jnp.array(blur, int)].set(
      1.0 if blur else 0.0))[0])


def test_greedy_ranking_known_answer(four_heads):
  """Only head 2 reaches the scores: blurring another head changes nothing (a
  tie, broken to the lower index, as the official strict '>'), so head 2 is
  removed last (ranked first) where blurring it lowers the target's
  probability, and first (ranked last) where it raises it."""
  f, x = four_heads["only"], four_heads["x"]
  t = jnp.arange(6) % 3
  rank = np.asarray(prompts.rank_heads(f, x, t))
  lowers = [_blurred_prob(f, x[b], int(t[b]), [2]) < _blurred_prob(f, x[b], int(t[b]), [])
            for b in range(6)]
  assert 0 < sum(lowers) < 6, lowers  # both cases occur
  for b in range(6):
    want = [2, 3, 1, 0] if lowers[b] else [3, 1, 0, 2]
    assert rank[b].tolist() == want, (b, lowers[b], rank[b])


def test_greedy_matches_the_official_loop(four_heads):
  """rank_heads equals the official code's loop, written out per image."""
  f, x = four_heads["f"], four_heads["x"][:3]
  t = jnp.array([2, 0, 1])
  rank = np.asarray(prompts.rank_heads(f, x, t))
  for b in range(3):
    remaining, removed = list(range(GH)), []
    while remaining:
      masks = np.zeros((len(remaining), GH), np.float32)
      for i, h in enumerate(remaining):
        masks[i, removed + [h]] = 1.0
      scores = np.asarray(_blurred_probs(f, x[b], t[b], jnp.asarray(masks)))
      removed.append(remaining[int(np.argmax(scores))])
      remaining.remove(removed[-1])
    assert rank[b].tolist() == removed[::-1]


def test_greedy_maps_one_compile_and_errors(four_heads):
  f, x = four_heads["f"], four_heads["x"]
  t = jnp.arange(6) % 3
  rank = np.asarray(prompts.rank_heads(f, x, t))
  top2 = saljax.prompt_cam(f, x, t, heads="greedy", top_k=2, per_head=True)
  every = np.asarray(saljax.prompt_cam(f, x, t, per_head=True))
  want = every[np.arange(6)[:, None], rank[:, :2]]
  np.testing.assert_allclose(np.asarray(top2), want, rtol=1e-6, atol=1e-8)
  mean2 = saljax.prompt_cam(f, x, t, heads="greedy", top_k=2)
  np.testing.assert_allclose(np.asarray(mean2), want.mean(1), rtol=1e-6, atol=1e-8)
  n0 = prompts._prompt_cam._cache_size()
  saljax.prompt_cam(f, x * 0.5, (t + 1) % 3, heads="greedy", top_k=2)
  assert prompts._prompt_cam._cache_size() == n0  # same shape and options: no new compile
  chunked = saljax.prompt_cam(f, x, t, heads="greedy", top_k=2, batch_size=4)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(mean2), rtol=1e-6, atol=1e-8)
  from saljax.explainers import _registry
  assert _registry.cost_of("prompt_cam", {}, f, x) == 1
  assert _registry.cost_of("prompt_cam", {"heads": "greedy", "top_k": 2}, f, x) == 1 + GH * GH
  with pytest.raises(ValueError, match=r"^prompt_cam: top_k: expected at most the 4 heads"):
    saljax.prompt_cam(f, x, t, heads="greedy", top_k=5)
  with pytest.raises(ValueError, match=r"^prompt_cam: heads: expected one of \['greedy', 'mean'\]"):
    saljax.prompt_cam(f, x, t, heads="best")
  with pytest.raises(ValueError, match=r"^rank_heads: expected a Prompt-CAM model"):
    vit = ViT(num_classes=3, patch=4, dim=16, depth=1, num_heads=2, mlp_dim=32)
    prompts.rank_heads(saljax.from_linen(vit, vit.init(jax.random.key(0), x[:1]), example=x[:1]),
                       x, t)
