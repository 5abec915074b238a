"""Depthwise convolution: XLA's grouped conv vs nine (or 25) shifted multiply-adds.

    python -m experiments.depthwise_bench --batch=8 --repeats=5 [--torch] [--out=bench.json]

Times, on the default JAX backend, EfficientNet-Lite0 (random weights, 224 px)
forward and input gradient (what gradient explainers run) with each
formulation, plus single depthwise layers of the shapes inside the network.
With ``--torch`` the PyTorch reference (efficientnet-lite-pytorch) is timed on
the same batch for scale. Prints a markdown table for docs/benchmarks.md and
the load average, since a shared machine skews absolute numbers; compare
rows measured together. Compile time is excluded (first call), medians of
`repeats` calls are reported.
"""
from __future__ import annotations

import json
import os
import statistics
import time


def _median_time(fn, repeats):
  import jax
  jax.block_until_ready(fn())  # compile + warm up
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def bench(batch: int = 8, repeats: int = 5, size: int = 224, with_torch: bool = False) -> dict:
  import jax
  import jax.numpy as jnp
  from saljax.models import efficientnet as E
  from saljax.models import layers as L

  rows = {}
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  module = E.efficientnet_lite0()
  variables = jax.jit(module.init)(jax.random.key(1, impl="rbg"), x[:1])
  for impl in L.DEPTHWISE_IMPLS:
    m = E.efficientnet_lite0(impl=impl)
    # Variables as arguments (not constants) so XLA cannot fold weight-only work.
    fwd = jax.jit(lambda v, x, m=m: m.apply(v, x))
    grad = jax.jit(jax.grad(lambda x, v, m=m: m.apply(v, x)[:, 0].sum()))
    rows[f"lite0 forward [{impl}]"] = _median_time(lambda: fwd(variables, x), repeats)
    rows[f"lite0 input gradient [{impl}]"] = _median_time(lambda: grad(x, variables), repeats)
  # Single layers: the block shapes of Lite0 at 224 px (channels, spatial, kernel, stride).
  for c, hw, k, s in [(96, 112, 3, 2), (144, 56, 5, 2), (480, 14, 3, 1), (672, 14, 5, 1)]:
    xl = jax.random.normal(jax.random.key(2), (batch, hw, hw, c))
    kern = jax.random.normal(jax.random.key(3), (k, k, 1, c))
    ct = jax.random.normal(jax.random.key(4), (batch, -(-hw // s), -(-hw // s), c))
    for impl in L.DEPTHWISE_IMPLS:
      # Kernel and cotangent are arguments: as constants, XLA would fold the
      # whole input gradient at compile time and time nothing.
      f = jax.jit(lambda x, kern, impl=impl, s=s: L.depthwise_conv(x, kern, s, impl))
      g = jax.jit(jax.grad(lambda x, kern, ct, impl=impl, s=s: (L.depthwise_conv(x, kern, s, impl) * ct).sum()))
      rows[f"dw {k}x{k}/{s} C={c} {hw}px forward [{impl}]"] = _median_time(lambda: f(xl, kern), repeats)
      rows[f"dw {k}x{k}/{s} C={c} {hw}px input gradient [{impl}]"] = _median_time(lambda: g(xl, kern, ct), repeats)
  if with_torch:
    import numpy as np
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_name("efficientnet-lite0").eval()
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())

    def tf():
      with torch.no_grad():
        return net(xt)

    def tg():
      xi = xt.clone().requires_grad_(True)
      net(xi)[:, 0].sum().backward()
      return xi.grad

    for name, fn in [("lite0 forward [torch]", tf), ("lite0 input gradient [torch]", tg)]:
      fn()
      ts = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
      rows[name] = statistics.median(ts)
  return {
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "cpu_count": os.cpu_count(),
      "loadavg": os.getloadavg(),
      "batch": batch,
      "auto_choice": L.DEPTHWISE_AUTO.get(jax.default_backend(), "xla"),
      "seconds": rows,
  }


def markdown(result: dict) -> str:
  lines = [f"backend {result['backend']} ({result['device']}), batch {result['batch']},"
           f" load average {tuple(round(v, 1) for v in result['loadavg'])}", "",
           "| measurement | seconds (median) |", "|---|---|"]
  lines += [f"| {k} | {v:.4f} |" for k, v in result["seconds"].items()]
  return "\n".join(lines)


def main():
  from absl import app, flags
  batch = flags.DEFINE_integer("batch", 8, "Batch size.")
  repeats = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")
  with_torch = flags.DEFINE_bool("torch", False, "Also time the PyTorch reference.")
  out = flags.DEFINE_string("out", None, "Write the result as JSON here.")

  def _main(argv):
    del argv
    result = bench(batch.value, repeats.value, with_torch=with_torch.value)
    print(markdown(result))
    if out.value:
      with open(out.value, "w") as fh:
        json.dump(result, fh, indent=1)

  app.run(_main)


if __name__ == "__main__":
  main()
