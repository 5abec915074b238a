r"""Plain against incremental occlusion (issue 20, part 1): time and exactness.

    python -m experiments._answers_occlusion --out=/tmp/occlusion_rows.json

For each model (ResNet-18 and ResNet-50 with random weights, EfficientNet-Lite0
with its ImageNet weights: `experiments.benchmark._load`) and each
``(window, stride)``, one row: ``plain_s`` and ``incremental_s`` (seconds of
one call on a batch of `batch` images, compilation excluded),
``plain_compile_s`` and ``incremental_compile_s`` (XLA compile plus tracing of
the first call, from `jax.monitoring`, as `experiments.benchmark` counts them),
``*_images_per_s``, ``speedup`` (plain_s / incremental_s) and
``max_rel_error`` (max |incremental - plain| over max |plain|), and
``mac_ratio``: convolution and dense multiply-adds per window, plain over
incremental (`_incremental.mac_ratio`), the speedup exact incremental
inference can reach where those dominate. With
``repeats=0`` the run time is the first call minus its compile and trace time
(each 224 px plain call takes minutes on a small CPU); with ``repeats >= 1``
it is the median of that many further calls. Where Captum is importable and
the model has a PyTorch twin (EfficientNet-Lite0: `benchmark._torch_reference`,
the same converted weights), ``captum_s`` times Captum's `Occlusion` with the
same window, stride, zero baseline and 64 perturbations per pass (saljax's
automatic chunk).

The targets (not tests): >= 2x plain occlusion on CPU for ResNet-18/50 at
224 px with window 32 stride 16, >= 3x with 8 px windows.
"""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

MODELS = ("resnet18", "resnet50", "efficientnet_lite0")
CONFIGS = ((32, 16), (8, 8))


def _timed(fn, repeats: int) -> tuple[float, float, object]:
  """(run seconds, compile + trace seconds, result) of `fn`."""
  import jax
  from experiments import benchmark as B

  with B._compiles() as stats:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
  compile_s = stats["s"] + stats["trace_s"]
  if repeats <= 0:
    return max(first - compile_s, 0.0), compile_s, out
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2], compile_s, out


def _captum_seconds(name: str, x, target, window: int, stride: int) -> float | None:
  """Seconds of Captum's Occlusion on the PyTorch twin, or None without one."""
  try:
    import captum.attr as ca
    import torch
  except ImportError:
    return None
  if not name.startswith("efficientnet_lite"):
    return None  # no PyTorch twin of the zoo ResNets here (torchvision is not installed)
  import numpy as np
  from experiments import benchmark as B
  from saljax import parallel

  torch.set_num_threads(os.cpu_count() or 1)
  net = B._torch_reference(name)
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  tt = torch.from_numpy(np.asarray(target)).long()
  occ = ca.Occlusion(net)
  t0 = time.perf_counter()
  with torch.no_grad():
    occ.attribute(xt, target=tt, sliding_window_shapes=(3, window, window),
                  strides=(3, stride, stride), baselines=0.0,
                  perturbations_per_eval=parallel.max_evals_per_chunk())
  return time.perf_counter() - t0


def incremental_rows(models: Sequence[str] = MODELS, configs: Sequence[tuple[int, int]] = CONFIGS,
                     *, size: int = 224, batch: int = 1, repeats: int = 0, captum: bool = True,
                     out: str | None = None) -> list[dict]:
  """Rows timing plain and incremental occlusion (module docstring), written
  to `out` (JSON, atomically) after each row so an interrupted run keeps what
  it measured. Defaults: the three issue models at 224 px, windows 32/16 and
  8/8, one image per call, run time from the first call (`repeats=0`)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from experiments import benchmark as B
  from experiments._common import atomic_write_text
  from saljax.explainers import _incremental as I
  from saljax.explainers import perturbation as P

  rows: list[dict] = []
  x = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), minval=-1.0, maxval=1.0)
  for name in models:
    model = B._load(name, "float32", size)
    target = jnp.argmax(model(x), -1)
    for window, stride in configs:
      row = {"model": name, "size": size, "batch": batch, "window": window, "stride": stride,
             "windows": len(P._occlusion_starts(x.shape, window, stride)[0]),
             "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
             "load_avg_1min": os.getloadavg()[0]}
      starts, win = P._occlusion_starts(x.shape, window, stride)
      row["mac_ratio"] = round(I.mac_ratio(model, x, starts, win), 3)
      for mode, label in ((False, "plain"), (True, "incremental")):
        run_s, compile_s, res = _timed(
            lambda mode=mode: P.occlusion(model, x, target, window=window, stride=stride,
                                          incremental=mode), repeats)
        row[f"{label}_s"], row[f"{label}_compile_s"] = round(run_s, 3), round(compile_s, 3)
        row[f"{label}_images_per_s"] = round(batch / run_s, 4) if run_s > 0 else None
        row[f"_{label}"] = np.asarray(res)
      plain, inc = row.pop("_plain"), row.pop("_incremental")
      row["speedup"] = (round(row["plain_s"] / row["incremental_s"], 3)
                        if row["incremental_s"] > 0 else None)
      row["max_rel_error"] = float(np.abs(inc - plain).max() / max(np.abs(plain).max(), 1e-30))
      if captum:
        c = _captum_seconds(name, x, target, window, stride)
        row["captum_s"] = None if c is None else round(c, 3)
        row["captum_images_per_s"] = None if c is None else round(batch / c, 4)
      rows.append(row)
      print(json.dumps(row), flush=True)
      if out:
        atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
  return rows


def main() -> None:
  import argparse
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--configs", default=";".join(f"{w},{s}" for w, s in CONFIGS),
                 help="window,stride pairs separated by ';'")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=0)
  p.add_argument("--no-captum", action="store_true")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  configs = [tuple(int(v) for v in c.split(",")) for c in a.configs.split(";") if c]
  incremental_rows(a.models.split(","), configs, size=a.size, batch=a.batch, repeats=a.repeats,
                   captum=not a.no_captum, out=a.out)


if __name__ == "__main__":
  main()
