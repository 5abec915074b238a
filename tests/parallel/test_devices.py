"""8 simulated CPU devices give the same maps as 1 (in a subprocess, so the
rest of the suite keeps one device)."""
import json
import os
import subprocess
import sys


def test_eight_devices_equal_one():
  script = os.path.join(os.path.dirname(__file__), "_sharded_gradients.py")
  res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) >= {"gradient", "integrated_gradients", "smoothgrad", "guided_ig"}
  for name, d in diffs.items():
    assert d < 1e-5, (name, d)


def test_every_registered_method_on_eight_devices_equals_one():
  import saljax
  script = os.path.join(os.path.dirname(__file__), "_sharded_all.py")
  res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=1500)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(diffs) == set(saljax.explainers.names()) | set(saljax.metrics.names())
  bad = {k: v for k, v in diffs.items() if isinstance(v, str) or v > 1e-5}
  assert not bad, bad


def test_targets_and_pytree_inputs_on_eight_devices_equal_one():
  script = os.path.join(os.path.dirname(__file__), "_sharded_targets.py")
  res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  diffs = json.loads(res.stdout.strip().splitlines()[-1])
  assert len(diffs) == 5
  bad = {k: v for k, v in diffs.items() if isinstance(v, str) or v > 1e-5}
  assert not bad, bad
