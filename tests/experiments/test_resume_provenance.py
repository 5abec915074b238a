"""Stored results are keyed by what made them: explain recomputes a chunk whose
model, options or target changed (or that cannot be read), evaluate refuses
what the manifest does not vouch for, sanity and roar reuse their stored units;
each binary keeps its own config; a resumed train run logs each step once;
the console shows a progress line, not Orbax's INFO lines."""
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import evaluate, explain, roar, sanity, train
from saljax import logging as slog
from tests.experiments import test_explain_evaluate as TE
from tests.experiments import test_sanity_roar as TS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(**explain_opts):
  c = TE.tiny()
  c.explain.methods = ("gradient", "integrated_gradients")
  c.explain.overlays = 1
  for k, v in explain_opts.items():
    c.explain.options[k] = v
  return c


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("prov"))
  train.run(_cfg(), wd)
  explain.run(_cfg(), wd)
  return wd


def _bytes(wd, rel):
  with open(os.path.join(wd, rel), "rb") as fh:
    return fh.read()


def _copy(src, tmp_path):
  dst = str(tmp_path / "wd")
  shutil.copytree(src, dst)
  return dst


def test_changed_options_or_model_recompute_and_never_reuse(explained, tmp_path, caplog):
  wd = _copy(explained, tmp_path)
  ig = "maps/integrated_gradients/chunk_00001.npz"
  before_ig, before_grad = _bytes(wd, ig), _bytes(wd, "maps/gradient/chunk_00001.npz")
  caplog.set_level(logging.WARNING)
  explain.run(_cfg(integrated_gradients={"steps": 7}), wd)
  assert _bytes(wd, ig) != before_ig  # recomputed with the new option
  assert _bytes(wd, "maps/gradient/chunk_00001.npz") == before_grad  # unchanged key: reused
  assert "integrated_gradients/chunk_00001.npz" in caplog.text and "options" in caplog.text
  fresh = str(tmp_path / "fresh")
  c = _cfg(integrated_gradients={"steps": 7})
  c.explain.train_workdir = wd
  explain.run(c, fresh)
  assert _bytes(fresh, ig) == _bytes(wd, ig)
  # Another model (trained further): every chunk is recomputed, the manifest says so.
  c = _cfg()
  c.train.steps = 14
  train.run(c, wd)
  caplog.clear()
  manifest = explain.run(c, wd)
  assert manifest["model_step"] == 14
  assert _bytes(wd, "maps/gradient/chunk_00001.npz") != before_grad
  assert "weights_sha256" in caplog.text
  # evaluate refuses the old model's maps: here, the maps of step 14 with the model of step 10.
  old = _cfg()
  old.explain.checkpoint = "best"
  shutil.rmtree(os.path.join(wd, "checkpoints", "best"))
  shutil.copytree(os.path.join(explained, "checkpoints", "best"), os.path.join(wd, "checkpoints", "best"))
  with pytest.raises(ValueError, match=r"manifest.json: the maps were made by model 'mlp' at step 14"):
    evaluate.run(old, wd)


def test_truncated_chunk_is_named_and_recomputed(explained, tmp_path, caplog):
  wd = _copy(explained, tmp_path)
  p = os.path.join(wd, "maps", "gradient", "chunk_00001.npz")
  good = _bytes(wd, p)
  with open(p, "r+b") as fh:
    fh.truncate(len(good) // 2)
  # evaluate: refused by name (not an anonymous BadZipFile).
  with pytest.raises(ValueError, match=r"chunk .*gradient/chunk_00001.npz"):
    evaluate.run(_cfg(), wd)
  # A short chunk (a valid file with fewer rows) is refused too.
  d = dict(np.load(os.path.join(wd, "maps", "gradient", "chunk_00000.npz")))
  d["attribution"] = d["attribution"][:2]
  np.savez(os.path.join(wd, "maps", "gradient", "chunk_00000.npz"), **d)
  with pytest.raises(ValueError, match=r"chunk .*gradient/chunk_00000.npz"):
    explain.load_maps(os.path.join(wd, "maps"), "gradient")
  # A killed write's temporary file, left behind.
  junk = os.path.join(wd, "maps", "gradient", ".chunk_00002.npz.0123abcd.tmp.npz")
  open(junk, "wb").write(b"half")
  caplog.set_level(logging.WARNING)
  explain.run(_cfg(), wd)
  assert "gradient/chunk_00001.npz is unreadable" in caplog.text
  assert "gradient/chunk_00000.npz: expected 4 rows" in caplog.text
  assert _bytes(wd, p) == good and not os.path.exists(junk)
  for f in ("manifest.json", "gradient/chunk_00000.npz", "integrated_gradients/chunk_00002.npz"):
    assert _bytes(wd, "maps/" + f) == _bytes(explained, "maps/" + f), f


def test_truncated_manifest_is_named_and_rebuilt(explained, tmp_path):
  wd = _copy(explained, tmp_path)
  m = os.path.join(wd, "maps", "manifest.json")
  text = open(m).read()
  open(m, "w").write(text[: len(text) // 2])
  with pytest.raises(ValueError, match=r"maps/manifest.json is unreadable.*run experiments.explain again"):
    evaluate.run(_cfg(), wd)
  explain.run(_cfg(), wd)  # rebuilt from the verified chunks
  assert open(m).read() == text


def test_each_binary_keeps_its_own_config(explained, tmp_path):
  wd = _copy(explained, tmp_path)
  c = _cfg()
  c.train.steps = 2000  # what explain's config says; the model was trained for 10
  explain.run(c, wd)
  assert json.load(open(os.path.join(wd, "config.train.json")))["train"]["steps"] == 10
  assert json.load(open(os.path.join(wd, "config.explain.json")))["train"]["steps"] == 2000


def _records(wd):
  return [{k: v for k, v in r.items() if k != "time"}
          for r in slog.read_jsonl(os.path.join(wd, "metrics.jsonl"))]


def test_resumed_train_logs_each_step_once(tmp_path):
  from tests.experiments.test_train_binary import tiny
  c = tiny(steps=20, max_to_keep=10)
  full = str(tmp_path / "full")
  train.run(c, full)
  # What a kill after step 20 was logged, but before checkpoints 15 and 20 landed, leaves.
  killed = str(tmp_path / "killed")
  shutil.copytree(full, killed)
  for s in ("15", "20"):
    shutil.rmtree(os.path.join(killed, "checkpoints", "latest", s))
    shutil.rmtree(os.path.join(killed, "checkpoints", "best", s), ignore_errors=True)
  with open(os.path.join(killed, "metrics.jsonl"), "a") as fh:
    fh.write('{"step": 21, "train_lo')  # torn by the kill
  train.run(c, killed)
  assert _records(killed) == _records(full)
  keys = [(r["step"], tuple(sorted(r))) for r in _records(killed)]
  assert len(keys) == len(set(keys))


@pytest.fixture(scope="module")
def sanity_trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("sanity"))
  train.run(TS.tiny(), wd)
  return wd


def _counting(monkeypatch, module, name):
  calls = []
  fn = getattr(module, name)
  monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or fn(*a, **k))
  return calls


def test_sanity_reruns_reuse_stored_curves(sanity_trained, tmp_path, monkeypatch):
  from saljax import metrics
  wd = _copy(sanity_trained, tmp_path)
  calls = _counting(monkeypatch, metrics, "model_parameter_randomization")
  sanity.run(TS.tiny(), wd)
  assert len(calls) == 2  # 1 method x 2 similarities
  outs = ("sanity.csv", "sanity.json", "sanity_gradient_x_input.png", "sanity_maps.png",
          "sanity_curves.png")
  first = {f: _bytes(wd, f) for f in outs}
  sanity.run(TS.tiny(), wd)
  assert len(calls) == 2  # nothing recomputed
  assert {f: _bytes(wd, f) for f in outs} == first
  c = TS.tiny()
  c.sanity.init_std = 0.5
  sanity.run(c, wd)
  assert len(calls) == 4  # a changed option recomputes both units


def test_roar_reruns_reuse_stored_retrainings(sanity_trained, tmp_path, monkeypatch):
  wd = _copy(sanity_trained, tmp_path)
  retrain = _counting(monkeypatch, roar, "retrain_accuracy")
  attrib = _counting(monkeypatch, roar, "attribution_scores")
  roar.run(TS.tiny(), wd)
  assert len(retrain) == 2 and len(attrib) == 2
  first = {f: _bytes(wd, f) for f in ("roar.csv", "roar.json", "roar.png")}
  os.remove(os.path.join(wd, "roar", "units", "k0.5__bottom__seed0.npz"))  # as if killed there
  roar.run(TS.tiny(), wd)
  assert len(retrain) == 3  # only the lost unit
  roar.run(TS.tiny(), wd)
  assert len(retrain) == 3 and len(attrib) == 4  # nothing explained when all is stored
  assert {f: _bytes(wd, f) for f in first} == first
  c = TS.tiny()
  c.roar.retrain_steps = 3
  out = roar.run(c, wd)
  assert len(retrain) == 5 and out["units"]["reused"] == []


def test_console_shows_progress_not_library_info(tmp_path):
  wd = str(tmp_path / "wd")
  cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/blockmnist_standard.py",
         f"--workdir={wd}", "--config.model.width=16", "--config.model.depth=1",
         "--config.train.steps=20", "--config.train.batch_size=16", "--config.train.log_every=5",
         "--config.train.eval_every=10", "--config.train.checkpoint_every=5",
         "--config.train.eval_examples=32", "--config.train.progress_every_s=0"]
  r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
  progress = [l for l in lines if l.startswith("train: ")]
  # One line per log interval (4) and per eval (2), and the final one; nothing else but warnings.
  assert len(progress) == 7, lines
  assert len(lines) - len(progress) <= 3, lines
  assert "loss" in progress[0] and "eval_accuracy" in progress[2] and progress[0].startswith("train: 5/20")
  log = open(os.path.join(wd, "logs", "train.log")).read()
  assert "orbax" in log.lower() and log.count("\n") > 20  # the library's INFO lines went here


def test_unverified_step_with_truncated_orbax_metadata_is_refused_by_name(tmp_path, caplog):
  from experiments import _common as C
  from tests.experiments.test_train_binary import tiny
  c = tiny(steps=10, checkpoint_every=5, max_to_keep=5)
  wd = str(tmp_path)
  train.run(c, wd)
  step = os.path.join(wd, "checkpoints", "latest", "10")
  os.remove(os.path.join(step, "saljax_digest.json"))  # killed before its digest was written
  meta = os.path.join(step, "meta", "metadata")
  with open(meta, "r+b") as fh:
    fh.truncate(os.path.getsize(meta) // 2)
  caplog.set_level(logging.WARNING)
  assert C.load_trained(c, wd, (56, 28, 1), 10).step == 5
  assert f"{step}: its metadata cannot be read (JSONDecodeError" in caplog.text
  assert train.run(c, wd)["step"] == 10  # resumed from 5, step 10 written again
