"""saljax.checkpoint and saljax.logging, and every experiment config."""
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _common as C
from saljax import checkpoint as ckpt
from saljax import logging as slog


def _state(scale=1.0):
  return {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": {"x": jnp.ones(3) * scale},
          "step": jnp.int32(0)}


def test_keep_last_and_best_by_metric(tmp_path):
  fp = ckpt.fingerprint("m", _state())
  mgr = ckpt.CheckpointManager(str(tmp_path), fingerprint=fp, max_to_keep=2,
                               best_metric="loss", best_mode="min", async_save=False)
  for step, loss in [(1, 0.9), (2, 0.2), (3, 0.5), (4, 0.7)]:
    mgr.save(step, _state(step), metrics={"loss": loss})
  mgr.wait()
  assert mgr.all_steps() == [3, 4] and mgr.latest_step() == 4
  assert mgr.best_step() == 2
  step, state, metrics = mgr.restore(_state(), best=True)
  assert step == 2 and metrics == {"loss": 0.2}
  np.testing.assert_array_equal(state["w"], _state(2)["w"])
  step, state, _ = mgr.restore(_state())
  assert step == 4
  np.testing.assert_array_equal(state["b"]["x"], _state(4)["b"]["x"])
  mgr.close()


def test_fingerprint_mismatch_is_refused_before_reading_state(tmp_path):
  mgr = ckpt.CheckpointManager(str(tmp_path), fingerprint=ckpt.fingerprint("m", _state()),
                               async_save=False)
  mgr.save(1, _state())
  mgr.close()
  other = {"w": jnp.zeros((3, 3)), "b": {"x": jnp.zeros(3)}, "step": jnp.int32(0)}
  mgr = ckpt.CheckpointManager(str(tmp_path), fingerprint=ckpt.fingerprint("m", other))
  with pytest.raises(ValueError, match=r"shapes differ.*\[2, 3\] vs model \[3, 3\]"):
    mgr.restore(other)
  mgr = ckpt.CheckpointManager(str(tmp_path), fingerprint=ckpt.fingerprint("other", _state()))
  with pytest.raises(ValueError, match="written by model 'm'"):
    mgr.restore(_state())


def test_no_checkpoint(tmp_path):
  mgr = ckpt.CheckpointManager(str(tmp_path), fingerprint=ckpt.fingerprint("m", _state()))
  assert mgr.latest_step() is None
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    mgr.restore(_state())


def test_metric_writer_jsonl_tensorboard_config(tmp_path):
  w = slog.MetricWriter(str(tmp_path))
  w.write_config({"a": 1, "b": {"c": (1, 2)}}, "train")
  w.write(3, {"loss": jnp.float32(0.5), "acc": np.array([0.25]), "curve": np.zeros(4)})
  w.close()
  recs = slog.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert recs[0]["step"] == 3 and recs[0]["loss"] == 0.5 and recs[0]["acc"] == 0.25
  assert "curve" not in recs[0]  # not a scalar
  assert json.load(open(tmp_path / "config.train.json")) == {"a": 1, "b": {"c": [1, 2]}}
  assert os.listdir(tmp_path / "tensorboard")
  with open(tmp_path / "metrics.jsonl", "a") as fh:
    fh.write('{"step": 4, "lo')  # a line torn by a kill
  assert len(slog.read_jsonl(str(tmp_path / "metrics.jsonl"))) == 1


def test_only_the_writer_process_writes(tmp_path):
  w = slog.MetricWriter(str(tmp_path / "x"), enabled=False)
  w.write_config({"a": 1}, "train")
  w.write(1, {"loss": 1.0})
  w.close()
  assert not os.path.exists(tmp_path / "x")
  assert slog.is_writer() == (jax.process_index() == 0)


def test_progress_rate_and_eta():
  t = [100.0]
  lines = []
  p = slog.Progress(100, name="train", start=20, every_seconds=5, log=lines.append, clock=lambda: t[0])
  t[0] = 110.0  # 30 steps in 10 s -> 3/s; 50 left -> 0:00:17
  assert p.update(50) == "train: 50/100 (50.0%) 3/s elapsed 0:00:10 ETA 0:00:17"
  t[0] = 112.0
  assert p.update(56) is None  # within every_seconds
  assert p.update(56, force=True) is not None
  assert len(lines) == 2


@pytest.mark.parametrize("name", ["blockmnist_standard", "blockmnist_robust", "cifar10_resnet18",
                                  "imagenet_efficientnet_lite0", "vit_cifar10"])
def test_configs_load_validate_and_lock(name):
  c = importlib.import_module(f"experiments.configs.{name}").get_config()
  C.check_config(c)
  with pytest.raises(AttributeError):
    c.train.not_a_field = 1
  c.explain.options["gradient"] = {"absolute": True}  # per-method options stay open


@pytest.mark.parametrize("name,shape", [("cifar10_resnet18", (32, 32, 3)), ("vit_cifar10", (32, 32, 3))])
def test_config_models_build(name, shape):
  c = C.check_config(importlib.import_module(f"experiments.configs.{name}").get_config())
  c.model.width = 8  # the architecture, tiny
  c.model.depth = 1
  c.model.num_heads = 2
  m = C.build_model(c, 10, shape)
  # Shapes only (nothing compiles): the architecture builds and maps images to 10 logits.
  v = jax.eval_shape(lambda k: m.module.init(k, jnp.zeros((1, *shape)), train=False), jax.random.key(0))
  logits, _ = jax.eval_shape(lambda v, x: m.apply(v, x, train=True), v, jnp.zeros((2, *shape)))
  assert logits.shape == (2, 10)
