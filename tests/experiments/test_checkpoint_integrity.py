"""Checkpoint integrity: a corrupt step is refused by name and the newest
intact one used; readers never delete a trainer's temporary directories; one
trainer per workdir; `best` repaired after a kill between the two saves."""
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import _common as C
from experiments import train
from saljax import checkpoint as ckpt
from saljax import logging as slog
from tests.experiments.test_train_binary import tiny

SHAPE, CLASSES = (56, 28, 1), 10  # BlockMNIST


def _largest_file(step_dir):
  # The digest file is skipped by name (a literal, so this runs on code without digests too).
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if "saljax_digest" not in f]
  return max(files, key=os.path.getsize)


def _corrupt(path, how):
  size = os.path.getsize(path)
  with open(path, "r+b") as fh:
    if how == "garbage":  # 4 KiB of garbage in the middle
      n = min(4096, size)
      fh.seek(max(0, size // 2 - n // 2))
      fh.write(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    else:  # one flipped bit
      fh.seek(size // 2)
      b = fh.read(1)[0]
      fh.seek(size // 2)
      fh.write(bytes([b ^ 0x10]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 20-step run keeping latest steps 15 and 20 (copied per test)."""
  wd = tmp_path_factory.mktemp("trained")
  train.run(tiny(steps=20, max_to_keep=2), str(wd))
  return wd


def _copy(trained, tmp_path):
  wd = tmp_path / "wd"
  shutil.copytree(trained, wd)
  return wd


@pytest.mark.parametrize("how", ["garbage", "bitflip"])
def test_corrupt_latest_falls_back_to_older_step(trained, tmp_path, how, caplog):
  wd = _copy(trained, tmp_path)
  latest = wd / "checkpoints" / "latest"
  assert sorted(os.listdir(latest)) == ["15", "20"]
  bad = _largest_file(latest / "20")
  _corrupt(bad, how)
  caplog.set_level(logging.WARNING)
  # The reader (explain's path) uses step 15, warns naming step 20 and the file.
  t = C.load_trained(tiny(steps=20), str(wd), SHAPE, CLASSES)
  assert t.step == 15
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(t.variables))
  msg = caplog.text
  assert str(latest / "20") in msg and os.path.relpath(bad, latest / "20") in msg and "corrupt" in msg
  assert os.path.isdir(latest / "20")  # a reader moves nothing
  # The trainer resumes from 15 (not the corrupt 20), redoes 15..20 with finite losses.
  out = train.run(tiny(steps=20, max_to_keep=2), str(wd))
  assert out["step"] == 20
  recs = slog.read_jsonl(str(wd / "metrics.jsonl"))
  assert all(np.isfinite(r["train_loss"]) for r in recs if "train_loss" in r)
  # 20 trained again; the records the corrupt run wrote past 15 were dropped.
  assert [r["step"] for r in recs if "train_loss" in r] == [5, 10, 15, 20]
  assert any(d.startswith("20.corrupt-") for d in os.listdir(latest))  # kept for inspection
  assert t.step == 15 and C.load_trained(tiny(steps=20), str(wd), SHAPE, CLASSES).step == 20


def test_all_corrupt_is_a_clear_error(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  latest = wd / "checkpoints" / "latest"
  for s in ("15", "20"):
    _corrupt(_largest_file(latest / s), "bitflip")
  with pytest.raises(ValueError, match=r"no intact checkpoint in .*latest.*15.*corrupt"):
    C.load_trained(tiny(steps=20), str(wd), SHAPE, CLASSES)
  with pytest.raises(ValueError, match=r"no intact checkpoint in .*latest"):
    train.run(tiny(steps=25, max_to_keep=2), str(wd))


def test_corrupt_best_falls_back_to_best_intact_latest(trained, tmp_path, caplog):
  wd = _copy(trained, tmp_path)
  best = wd / "checkpoints" / "best"
  (step,) = os.listdir(best)
  _corrupt(_largest_file(best / step), "garbage")
  c = tiny(steps=20)
  c.explain.checkpoint = "best"
  caplog.set_level(logging.WARNING)
  t = C.load_trained(c, str(wd), SHAPE, CLASSES)
  assert t.step in (15, 20) and str(best / step) in caplog.text


def test_reader_leaves_the_trainers_temporary_directory(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  # What a trainer writing step 25 right now has on disk.
  tmp = wd / "checkpoints" / "latest" / "25.orbax-checkpoint-tmp-123"
  tmp.mkdir()
  (tmp / "in_progress").write_text("being written")
  t = C.load_trained(tiny(steps=20), str(wd), SHAPE, CLASSES)
  assert t.step == 20
  assert (tmp / "in_progress").exists()


def test_second_trainer_on_a_workdir_is_refused(tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX);"
       " f.write('pid holder'); f.flush(); print('locked', flush=True); time.sleep(60)",
       str(wd / ".lock")], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=r"workdir .*wd is in use.*\.lock"):
      train.run(tiny(steps=5), str(wd))
    assert not os.path.exists(wd / "checkpoints")  # refused before any work
  finally:
    holder.kill()
    holder.wait()
  # A killed holder frees the workdir: the kernel drops its flock.
  assert train.run(tiny(steps=5), str(wd))["step"] == 5


def test_stale_best_is_repaired_on_resume(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  best = wd / "checkpoints" / "best"
  # A kill after latest committed step 20 but before best committed it: best
  # is left without the step that should be there.
  mgr = C.checkpoint_manager(tiny(steps=20), str(wd), *_model_and_state())
  metrics = {s: mgr.check(s)["metrics"] for s in mgr.all_steps()}
  mgr.close()
  shutil.rmtree(best)  # the kill left best without its step
  out = train.run(tiny(steps=20, max_to_keep=2), str(wd))  # resumes at 20, nothing to train
  assert out["step"] == 20
  want = max((m["eval_accuracy"], s) for s, m in metrics.items() if "eval_accuracy" in m)[1]
  assert sorted(os.listdir(best)) == [str(want)]


def test_best_left_stale_by_a_kill_is_re_saved(tmp_path):
  import jax.numpy as jnp
  state = lambda k: {"w": jnp.full((2, 3), float(k))}
  fp = ckpt.fingerprint("m", state(0))
  mgr = ckpt.CheckpointManager(str(tmp_path), fingerprint=fp, best_metric="loss",
                               best_mode="min", async_save=False)
  mgr.save(1, state(1), metrics={"loss": 0.9})

  def killed(*a, **k):
    raise KeyboardInterrupt("killed between the latest and the best save")
  mgr._best.save = killed
  with pytest.raises(KeyboardInterrupt):
    mgr.save(2, state(2), metrics={"loss": 0.2})
  mgr = ckpt.CheckpointManager(str(tmp_path), fingerprint=fp, best_metric="loss",
                               best_mode="min", async_save=False)
  assert mgr.best_step() == 1 and mgr.latest_step() == 2
  assert mgr.repair_best(state(0)) == 2
  step, s, m = mgr.restore(state(0), best=True)
  assert step == 2 and m == {"loss": 0.2} and float(s["w"][0, 0]) == 2.0
  assert mgr.repair_best(state(0)) is None  # consistent now
  mgr.close()


def _model_and_state():
  c = tiny(steps=20)
  model = C.build_model(c, CLASSES, SHAPE)
  tx = C.make_optimizer(c.train)
  return model, C.init_state(model, tx, C.init_key(c.seed), SHAPE)
