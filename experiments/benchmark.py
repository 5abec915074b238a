r"""Throughput, compile time and peak memory of explainers and metrics.

    python -m experiments.benchmark --model=efficientnet_lite0 --batch=8 \
        --methods=gradient,integrated_gradients,smoothgrad --compare=captum --out=runs/bench.jsonl

For each method it writes one JSON line (``"kind": "throughput"``) with
``method, device, batch, dtype, images_per_s`` (median of `repeats` calls
after the first), ``compile_s`` and ``compiles`` (seconds spent in, and number
of, XLA backend compilations during the first call, counted with
`jax.monitoring`), ``trace_s`` (tracing and lowering to MLIR in the first
call), ``first_call_s`` (the whole first call), ``steady_compiles``
(compilations during the timed calls: 0 unless something recompiles per call),
``peak_memory_mb, forward_images_per_s, gradient_images_per_s`` (plain forward
and one input gradient of the same model and batch, measured in the same run:
the yardsticks), ``model_evals`` and ``model_evals_per_s`` (model evaluations
per image, as the registry counts them, ``saljax.explainers.entry(name).cost``,
and per second), ``yardstick_ratio`` (images/s over the yardstick:
single-gradient images/s / n for methods whose evaluations include a backward
pass, ``entry.backward``, forward images/s / n otherwise), ``flops_per_image``
from XLA's cost analysis and ``peak_fraction`` of the device's dense peak where
it is known, and with ``--compare`` the ``baseline`` (Captum),
``baseline_images_per_s`` and ``ratio`` (saljax over baseline, the same
converted weights and inputs, in the same process).

With ``--checkpoints=N`` each method also gets a ``"kind": "checkpoints"`` row:
N parameter sets of the same architecture (the loaded weights scaled by
1.001, 1.002, ...: N checkpoints of one model) explained one call each, after
the first call compiled the method: ``checkpoint_calls_per_s``,
``checkpoint_images_per_s`` and ``checkpoint_compiles`` (0: the model's arrays
are traced pytree leaves, one compiled program serves every checkpoint), and
for contrast the first ``--closures`` of them as fresh Python closures over
their weights (``lambda x, m=m: m(x)``, the design that compiled every call):
``closure_calls_per_s``, ``closure_images_per_s``, ``closure_compiles`` and
``closure_compile_s``.

With ``--compare=quantus`` every Quantus twin (``experiments._quantus.twins()``,
one per metric: saljax's metric and Quantus's on the same weights, the same
attributions and the same random draws) also gets a ``"kind": "quantus_twin"``
row: ``saljax_s`` and ``quantus_s`` (median seconds per call of the batch, after
a first call that compiles), ``saljax_first_call_s``, ``ratio`` (Quantus seconds
over saljax seconds: how many times faster saljax is), ``model_evals``
(model evaluations per example: the twin's ``evaluations``, else the registry
entry's count at the metric's default options; ``model_evals_source`` says
which), ``saljax_evals_per_s`` and ``quantus_evals_per_s``, and for metrics
that evaluate the model those rates as a fraction of the model's own throughput
in the same run: ``saljax_forward_fraction`` (over saljax's plain forward
images/s) and ``quantus_forward_fraction`` (over the torch twin's forward
images/s, ``torch_forward_images_per_s``), or the ``*_gradient_fraction`` over
one input gradient for metrics whose evaluations include a backward pass
(robustness metrics re-explain); and ``max_abs_diff`` of the two scores with
``agrees`` (within the twin's ``atol`` and ``rtol``; None where the twin documents why
Quantus differs). The attributions are saljax's gradient of the predicted
class, as for the other metric rows. ``saljax_compiles`` counts the XLA
compilations of saljax's first call; where Quantus cannot run a metric on the
model (InputInvariance on a first layer without a bias) the row keeps
saljax's timing and says why in ``quantus_error``. The twins get the model's
own context from `model_context` (the randomization twins: ``model_fn``,
``params``, Lite0's flax <-> torch layer map and init; relative
representation stability: a layer both models name). ``--image_size`` resizes the pretrained
model's inputs (bilinear; the network pools globally) to keep twins whose work
grows with the pixel count affordable.

These machines are noisy: compare ratios from one run, not absolute numbers
across runs. Peak memory is the device allocator's peak where JAX reports one
(GPU/TPU); on CPU it is the growth of the process's peak resident memory during
the method, a coarser number.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import time
from typing import Any, Callable, Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnet_lite0",
                    "a pretrained name (saljax.models.load_pretrained) or a zoo name with random weights")
flags.DEFINE_list("methods", ["gradient", "integrated_gradients", "smoothgrad"],
                  "registered explainer or metric names")
flags.DEFINE_integer("batch", 8, "images per call")
flags.DEFINE_integer("steps", 50, "steps / samples of multi-step methods")
flags.DEFINE_integer("chunk", None, "batch_size option (steps or samples evaluated together)")
flags.DEFINE_integer("image_size", None, "input size (default: the model's)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype of model and inputs")
flags.DEFINE_enum("compare", "none", ["none", "captum", "quantus"], "baseline library, same weights")
flags.DEFINE_list("twins", ["all"],
                  "with --compare=quantus: the Quantus twins (experiments._quantus.twins()) to"
                  " time, by saljax metric name; 'all' (default) every twin, 'none' no twin rows")
flags.DEFINE_integer("repeats", 3, "timed calls per method after the compiling call")
flags.DEFINE_integer("threads", None, "torch threads (default: what JAX gets, os.cpu_count())")
flags.DEFINE_string("out", None, "JSON-lines file to append to (default: stdout only)")
flags.DEFINE_list("answers", [],
                  "rows that measure answers instead of throughput, in one run: 'shapley' (error"
                  " against exact Shapley values per model evaluation, with Captum's KernelShap),"
                  " 'completeness' (IG's completeness gap per gradient evaluation for every rule),"
                  " 'incremental' (incremental occlusion against plain and Captum); replaces"
                  " --methods")
flags.DEFINE_integer("checkpoints", 0,
                     "parameter sets of the model to explain one call each (0: no checkpoint rows)")
flags.DEFINE_integer("closures", 3,
                     "of those, how many to also explain as fresh closures (each compiles)")

WARMUP_CALLS = 3  # untimed calls of the yardsticks before timing them

# Dense peak FLOP/s by device kind, for the achieved fraction of peak.
PEAK_FLOPS = {
    ("NVIDIA H100", "bfloat16"): 989e12, ("NVIDIA H100", "float32"): 67e12,
    ("NVIDIA H200", "bfloat16"): 989e12, ("NVIDIA H200", "float32"): 67e12,
}


def _peak_flops(device, dtype: str) -> float | None:
  for (kind, dt), v in PEAK_FLOPS.items():
    if device.device_kind.startswith(kind) and dt == dtype:
      return v
  return None


def _entry(name: str):
  """The registry entry of explainer or metric `name`."""
  import saljax
  if name in saljax.explainers.names():
    return saljax.explainers.entry(name)
  return saljax.metrics.entry(name)


def _is_layer(entry) -> bool:
  """A layer explainer (takes the tapped model); metrics take the plain model."""
  import saljax
  return entry.name in saljax.explainers.names() and entry.kind == "layer"


def method_options(name: str, steps: int, chunk: int | None, x, model,
                   dtype: str = "float32") -> tuple[dict, int]:
  """Options for `name` and the number of model evaluations per image they
  cost (the registry's count, `Entry.cost`; 0 where it cannot say)."""
  import jax

  chunked = {} if chunk is None else {"batch_size": chunk}
  cd = {} if dtype == "float32" else {"compute_dtype": dtype}
  bs = {**chunked, **cd}  # gradient methods take both
  key = {"key": jax.random.key(0)}
  # Noise wrappers pass compute_dtype on to the explainer they wrap.
  noise = {"samples": steps, **key, **chunked, **({"explainer_options": cd} if cd else {})}
  table = {
      "gradient": dict(cd),
      "absolute_gradient": {},
      "gradient_x_input": {},
      "integrated_gradients": {"steps": steps, **bs},
      "smoothgrad": noise,
      "squaregrad": noise,
      "vargrad": noise,
      "expected_gradients": {"samples": steps, "references": x, **chunked, **key},
      "gradient_shap": {"samples": steps, "references": x, **chunked, **key},
      "blur_ig": {"steps": steps, **chunked},
      "guided_ig": {"steps": steps},
      # Captum's settings in the baseline: 32x32 window, stride 16;
      # KernelSHAP with 256 coalitions over a 16x16-pixel grid of features.
      "occlusion": {"window": 32, "stride": 16, **chunked},
      "rise": {"masks": max(steps, 1) * 20, **chunked, **key},
      "kernel_shap": {"samples": 256, "segments": _grid_segments(x, 16), **chunked, **key},
      "lime": {"samples": 256, "segments": _grid_segments(x, 16), **chunked, **key},
      "shapley_sampling": {"samples": 2, "segments": _grid_segments(x, 32), **chunked, **key},
      "deletion": {"steps": steps, **chunked},
      "insertion": {"steps": steps, **chunked},
      "pixel_flipping": {"steps": steps, **chunked},
  }
  entry = _entry(name)
  if name in table:
    opts = table[name]
  else:
    opts = dict(key) if entry.stochastic else {}
    if _is_layer(entry):
      opts["layer"] = model.default_layer
  try:
    evals = entry.cost(model.tapped if _is_layer(entry) else model, x, **opts)
  except Exception as e:  # a count that needs what the benchmark does not supply
    logging.warning("no evaluation count for %s: %s", name, e)
    evals = 0
  return opts, evals


def _grid_segments(x, cell: int):
  """Square segments of `cell` pixels, the same features Captum's runner uses."""
  import jax.numpy as jnp
  h, w = x.shape[1:3]
  seg = (jnp.arange(h)[:, None] // cell) * ((w + cell - 1) // cell) + jnp.arange(w)[None, :] // cell
  return jnp.broadcast_to(seg, (x.shape[0], h, w)).astype(jnp.int32)


def _load(name: str, dtype: str, image_size: int | None):
  """(saljax classifier, torch reference or None) with the same weights."""
  import jax
  import jax.numpy as jnp
  import saljax.models as zoo

  if name.startswith("efficientnet_lite"):
    model = zoo.load_pretrained(name)
  else:
    build = getattr(zoo, name, None)
    if build is None or not callable(build):
      raise app.UsageError(f"--model: unknown model {name!r}")
    size = image_size or 224
    model = zoo.wrap(build(), input_shape=(size, size, 3), name=name)  # random weights
  if dtype == "bfloat16":
    # bf16 parameters; inputs are cast by the explainers' compute_dtype, so
    # every matmul runs in bf16 while attributions accumulate in float32.
    cast = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), model.params)
    model = model.with_params(cast)
  return model


def _torch_reference(name: str):
  from efficientnet_lite_pytorch import EfficientNet
  from saljax.models import pretrained
  path = pretrained.weight_file(name)
  net = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(path))
  return net.eval()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """(seconds, output) of one call of `fn`, its output ready."""
  import jax
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t0, out


def _timed_median(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
  """(median seconds of `repeats` calls, the last call's output)."""
  times, out = [], None
  for _ in range(max(1, repeats)):
    t, out = _timed(fn)
    times.append(t)
  return statistics.median(times), out


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
  """(first call seconds, median seconds of `repeats` further calls)."""
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                "/jax/core/compile/jaxpr_to_mlir_module_duration")


@contextlib.contextmanager
def _compiles():
  """Counts XLA backend compilations inside the block: yields a dict with
  ``n`` (how many), ``s`` (their seconds) and ``trace_s`` (tracing and
  lowering seconds), filled in as they happen."""
  import jax
  stats = {"n": 0, "s": 0.0, "trace_s": 0.0}

  def listener(event, duration, **kwargs):
    if event == COMPILE_EVENT:
      stats["n"] += 1
      stats["s"] += duration
    elif event in TRACE_EVENTS:
      stats["trace_s"] += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield stats
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def _time_compiled(fn: Callable[[], Any], repeats: int) -> dict:
  """The first call (with the compilations it triggers) and the median of
  `repeats` further calls."""
  import jax
  with _compiles() as first:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first_s = time.perf_counter() - t0
  times = []
  with _compiles() as later:
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - t0)
  return {"first_s": first_s, "steady_s": statistics.median(times), "compiles": first["n"],
          "compile_s": first["s"], "trace_s": first["trace_s"], "steady_compiles": later["n"]}


def _checkpoints(model, n: int) -> list:
  """`n` parameter sets of `model`'s architecture, as `n` checkpoints of one
  model would be: the loaded weights scaled by 1.001, 1.002, ... (scaled on
  the host, so building them compiles nothing), placed on the device."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  host = jax.tree_util.tree_map(np.asarray, model.params)

  def scaled(a, s):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      return a
    return (a.astype(np.float32) * np.float32(s)).astype(a.dtype)

  out = []
  for k in range(n):
    params = jax.device_put(jax.tree_util.tree_map(lambda a: scaled(a, 1.0 + 1e-3 * (k + 1)), host))
    out.append(model.with_params(jax.block_until_ready(params)))
  return out


def _closure(model, layer: bool):
  """`model` as a fresh Python closure over its weights (opaque to saljax:
  its arrays are compile-time constants, so every new one compiles)."""
  if layer:
    from saljax.model import Tapped
    tapped = model.tapped
    return Tapped(lambda x, taps=None, t=tapped: t(x, taps), tapped.layer_names)
  return lambda x, m=model: m(x)


def _calls(call_on, models) -> tuple[float, dict, list]:
  """(seconds, compilations, [first output, last output]) of one call per model."""
  import jax
  import numpy as np
  ends = []
  with _compiles() as stats:
    t0 = time.perf_counter()
    for i, m in enumerate(models):
      out = jax.block_until_ready(call_on(m()))
      if i in (0, len(models) - 1):
        ends.append([np.asarray(a, np.float32) for a in jax.tree_util.tree_leaves(out)])
    seconds = time.perf_counter() - t0
  return seconds, stats, ends


def _checkpoint_row(call_on, model, layer: bool, n: int, closures: int, batch: int) -> dict:
  """Explains with a new parameter set every call (the method is compiled
  already): `n` checkpoints as data, then `closures` of them as closures."""
  import gc

  import numpy as np
  ckpts = _checkpoints(model, n)
  as_input = (lambda m: m.tapped) if layer else (lambda m: m)
  seconds, stats, ends = _calls(call_on, [lambda m=m: as_input(m) for m in ckpts])
  row = {"checkpoints": n, "checkpoint_calls_per_s": n / seconds,
         "checkpoint_images_per_s": n * batch / seconds, "checkpoint_compiles": stats["n"],
         "checkpoint_compile_s": stats["s"]}
  if n > 1:  # the maps are those of the new parameters, not of a stale copy
    row["checkpoint_outputs_differ"] = any(
        not np.allclose(a, b) for a, b in zip(ends[0], ends[-1]))
  k = min(closures, n)
  if k:
    seconds, stats, _ = _calls(call_on, [lambda m=m: _closure(m, layer) for m in ckpts[:k]])
    row.update(closures=k, closure_calls_per_s=k / seconds,
               closure_images_per_s=k * batch / seconds, closure_compiles=stats["n"],
               closure_compile_s=stats["s"])
  del ckpts
  gc.collect()
  return row


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_memory_mb(device, rss_before: float) -> float | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 20
  return max(_rss_mb() - rss_before, 0.0)


def _captum_runner(method: str, net, x_nchw, target, steps: int, chunk: int | None, layer=None):
  """A callable running the Captum counterpart of `method`, or None."""
  import torch
  import captum.attr as ca

  if method == "gradient":
    s = ca.Saliency(net)
    return lambda: s.attribute(x_nchw, target=target, abs=False)
  # Captum gets the memory bound saljax uses: with chunk=None, saljax's auto
  # chunk of 64 model evaluations per pass (SALJAX_MAX_EVALS_PER_CHUNK); Captum's
  # own default (all steps or samples in one pass) is killed for memory at
  # 50 steps on a 24 GiB machine.
  from saljax import parallel
  per_pass = parallel.max_evals_per_chunk()
  if method == "integrated_gradients":
    ig = ca.IntegratedGradients(net)
    ibs = per_pass if chunk is None else chunk * x_nchw.shape[0]
    return lambda: ig.attribute(x_nchw, target=target, n_steps=steps, method="gausslegendre",
                                internal_batch_size=ibs)
  if method == "smoothgrad":
    nt = ca.NoiseTunnel(ca.Saliency(net))
    rng = float((x_nchw.max() - x_nchw.min()).item())
    nbs = max(1, per_pass // x_nchw.shape[0]) if chunk is None else chunk
    return lambda: nt.attribute(x_nchw, target=target, nt_type="smoothgrad", nt_samples=steps,
                                stdevs=0.15 * rng, nt_samples_batch_size=nbs, abs=False)
  if method == "gradcam" and layer is not None:
    gc = ca.LayerGradCam(net, layer)
    return lambda: gc.attribute(x_nchw, target=target, relu_attributions=True)
  if method == "occlusion":
    occ = ca.Occlusion(net)
    return lambda: occ.attribute(x_nchw, target=target, sliding_window_shapes=(3, 32, 32),
                                 strides=(3, 16, 16), perturbations_per_eval=x_nchw.shape[0])
  if method == "kernel_shap":
    ks = ca.KernelShap(net)
    h = x_nchw.shape[-1]
    seg = (torch.arange(h)[:, None] // 16 * (h // 16) + torch.arange(h)[None, :] // 16)
    fmask = seg[None, None].expand(x_nchw.shape[0], 3, h, h)
    return lambda: torch.stack([ks.attribute(x_nchw[i:i + 1], target=target[i:i + 1],
                                             feature_mask=fmask[i:i + 1], n_samples=256,
                                             perturbations_per_eval=8)[0]
                                for i in range(x_nchw.shape[0])])
  if method in ("lime", "shapley_sampling"):
    h = x_nchw.shape[-1]
    cell = 16 if method == "lime" else 32
    seg = (torch.arange(h)[:, None] // cell * (h // cell) + torch.arange(h)[None, :] // cell)
    fmask = seg[None, None].expand(x_nchw.shape[0], 3, h, h).to(x_nchw.device)
    if method == "lime":
      lime = ca.Lime(net)
      return lambda: torch.stack([lime.attribute(x_nchw[i:i + 1], target=target[i:i + 1],
                                                 feature_mask=fmask[i:i + 1], n_samples=256,
                                                 perturbations_per_eval=8)[0]
                                  for i in range(x_nchw.shape[0])])
    svs = ca.ShapleyValueSampling(net)
    return lambda: svs.attribute(x_nchw, target=target, feature_mask=fmask, n_samples=2,
                                 perturbations_per_eval=8)
  return None


def _quantus_runner(method: str, net, x_nchw, target, attribution, steps: int, chunk: int | None):
  """A callable running Quantus's counterpart of the deletion-style `method`, or None.

  Quantus `PixelFlipping` on the same work as saljax's `deletion` with
  `steps`: the signed channel sum of `attribution` ranks pixels, each step
  sets `H * W / steps` whole pixels (all channels) to 0 in the normalized
  input, and the softmax score of the target is read after every step.
  Quantus flattens C x H x W, so a step is `3 * H * W / steps` features; its
  check that this divides H * W (not C * H * W) is skipped, since the
  broadcast map keeps a pixel's channels adjacent in its ranking.
  """
  if method not in ("deletion", "pixel_flipping"):
    return None
  import numpy as np
  import quantus

  class _PixelFlipping(quantus.PixelFlipping):
    def custom_preprocess(self, x_batch, **kwargs):  # see the docstring
      return None

  b, c, h, w = x_nchw.shape
  if (c * h * w) % steps:
    return None
  pf = _PixelFlipping(features_in_step=c * h * w // steps, perturb_baseline=0.0, abs=False,
                      normalise=False, disable_warnings=True, display_progressbar=False)
  x_np = x_nchw.detach().cpu().numpy()
  y_np = target.detach().cpu().numpy()
  a_np = np.asarray(attribution, np.float32).sum(-1)[:, None]
  dev = str(x_nchw.device)
  return lambda: np.asarray(pf(model=net, x_batch=x_np, y_batch=y_np, a_batch=a_np, device=dev,
                               softmax=True, channel_first=True, batch_size=chunk or b))


def _twin_names(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
  """The twins to time: ``["all"]`` every one, ``[]`` / ``["none"]`` none, else
  the named ones (an unknown name is an error naming the known ones)."""
  requested = list(requested or [])
  if requested in ([], ["none"]):
    return []
  if requested == ["all"]:
    return sorted(available)
  unknown = [n for n in requested if n not in available]
  if unknown:
    raise app.UsageError(f"--twins: no Quantus twin for {unknown}; twins: {sorted(available)}")
  return requested


def _registry_evals(name: str, model, x) -> int | None:
  """The registry's model evaluations per example at the metric's default
  options, or None where the count needs options the benchmark cannot supply."""
  try:
    return int(_entry(name).cost(model, x))
  except Exception:  # e.g. a count that needs an explainer or segments
    return None


def _forward_counter(net):
  """(rows forwarded so far, remove): counts examples through `net`'s forward."""
  rows = [0]

  def hook(module, inputs, output):
    rows[0] += int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 0

  handle = net.register_forward_hook(hook)
  return rows, handle.remove


def model_context(name: str, model, net, model_name: str = "") -> dict:
  """What twin `name` needs to know about the model beyond ``model(x)``: the
  randomization twins get the model as a function of its parameters
  (``model_fn``, ``params``) and, for EfficientNet-Lite, the flax <-> torch
  layer map; relative representation stability gets a layer both models
  name (``representation``: torch module, saljax tap)."""
  import saljax
  from experiments._quantus import randomization as QR
  lite = model_name.startswith("efficientnet_lite")
  if saljax.metrics.entry(name).family == "randomization":
    ctx = {"model_fn": lambda p, x: model.with_params(p)(x), "params": model.params}
    if lite:
      ctx["layer_map"] = QR.efficientnet_lite_layer_map(net)
      if name != "random_logit":  # std-0.01 draws zero Lite0's gradient (see the init)
        ctx["init"] = QR.matched_scale_init
    return ctx
  if name == "relative_representation_stability" and lite:
    return {"representation": ("_blocks.5", "blocks_5")}
  return {}


def twin_rows(model, x, target, net, x_nchw, names: Sequence[str], repeats: int,
              forward_ips: float, gradient_ips: float, common: dict, rows: list,
              out: str | None = None, seed: int = 0, model_name: str = "") -> list[dict]:
  """One ``"quantus_twin"`` row per twin of `names` (see the module docstring):
  both runners on the same weights (`model` and its torch twin `net`), the same
  attributions (saljax's gradient of `target`) and the twin's shared draws."""
  import jax
  import numpy as np
  import saljax
  import torch
  from experiments import _quantus as Q

  twins = Q.twins()
  batch = int(x.shape[0])
  x_np = np.asarray(x, np.float32)
  y_np = np.asarray(target)
  a_nhwc = np.asarray(saljax.gradient(model, x, target), np.float32)
  a_nchw = a_nhwc.transpose(0, 3, 1, 2).copy()
  xq = x_nchw.detach().cpu().numpy()
  with torch.no_grad():
    for _ in range(WARMUP_CALLS):
      net(x_nchw)

    def fwd():
      net(x_nchw)
      if x_nchw.is_cuda:
        torch.cuda.synchronize()

    _, t_torch = _time(fwd, repeats)
  torch_ips = batch / t_torch
  made = []
  for name in names:
    twin = twins[name]
    row = {"kind": "quantus_twin", **common, "method": name, "quantus": twin.quantus,
           "forward_images_per_s": forward_ips, "gradient_images_per_s": gradient_ips,
           "torch_forward_images_per_s": torch_ips}
    try:
      ctx = twin.context(x_np, y_np, seed) if twin.context is not None else {}
      ctx.update(model_context(name, model, net, model_name))
      ours = lambda: np.asarray(jax.block_until_ready(
          twin.run_saljax(model, x, a_nhwc, y_np, **ctx)), np.float64)
      theirs = lambda: np.asarray(twin.run_quantus(net, xq, a_nchw, y_np, **ctx), np.float64)
      with _compiles() as first_compiles:
        first, _ = _timed(ours)
      # The median of `repeats` calls after the compiling one (the last one's
      # scores are compared with Quantus').
      t_ours, s_ours = _timed_median(ours, repeats)
    except Exception as e:  # report and go on: one twin must not stop the run
      logging.error("quantus twin %s failed: %s", name, e)
      row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
      _emit(row, rows, out)
      made.append(row)
      continue
    entry = _entry(name)
    try:
      twin_evals = twin.evals(model, x, ctx)
    except Exception as e:  # a count the registry cannot give for these options
      logging.warning("no evaluation count for twin %s: %s", name, e)
      twin_evals = 0
    registry = _registry_evals(name, model, x)
    evals = twin_evals or registry or 0
    row.update(saljax_s=t_ours, saljax_first_call_s=first, saljax_compiles=first_compiles["n"],
               twin_evals=twin_evals, registry_evals=registry, model_evals=evals,
               model_evals_source="twin" if twin_evals else ("registry" if registry else None),
               differs=twin.differs or None)
    if evals:
      row["saljax_evals_per_s"] = evals * batch / t_ours
      # Perturbation metrics run forwards (robustness ones re-explain: gradients).
      kind = "gradient" if entry.backward else "forward"
      row["yardstick"] = kind
      row[f"saljax_{kind}_fraction"] = row["saljax_evals_per_s"] / (
          gradient_ips if entry.backward else forward_ips)
    try:  # Quantus in its own try: a metric Quantus cannot run still has saljax's row
      # Quantus compiles nothing (the torch twin is warm from the yardstick):
      # its first call counts the rows it forwards and is timed with the rest.
      counted, remove = _forward_counter(net)
      try:
        t_first, s_theirs = _timed(theirs)
      finally:
        remove()
      t_more = [_timed(theirs)[0] for _ in range(max(0, repeats - 1))]
      t_theirs = statistics.median([t_first] + t_more)
    except Exception as e:
      logging.error("quantus side of twin %s failed: %s", name, e)
      row["quantus_error"] = f"{type(e).__name__}: {str(e)[:300]}"
      _emit(row, rows, out)
      made.append(row)
      continue
    row.update(quantus_s=t_theirs, ratio=t_theirs / t_ours,
               quantus_evals_measured=counted[0] / batch)
    if s_ours.shape == s_theirs.shape:
      diff = float(np.nanmax(np.abs(s_ours - s_theirs))) if s_ours.size else 0.0
      row["max_abs_diff"] = diff
      # Quantus returns NaN for an example whose prediction a perturbation
      # changed (the robustness metrics' default); saljax scores it without that
      # perturbation (docs/metrics.md), so agreement is judged on the rest.
      known = np.isfinite(s_theirs)
      row["quantus_nan"] = int((~known).sum())
      row["agrees"] = None if twin.differs else twin.agrees(s_ours[known], s_theirs[known])
    else:
      row["max_abs_diff"] = None
      row["agrees"] = None if twin.differs else False
    if evals:
      row["quantus_evals_per_s"] = evals * batch / t_theirs
      if not entry.backward:
        row["quantus_forward_fraction"] = row["quantus_evals_per_s"] / torch_ips
    _emit(row, rows, out)
    made.append(row)
  return made


def run(model_name: str, methods: list[str], batch: int, steps: int, chunk: int | None,
        dtype: str, compare: str, repeats: int, image_size: int | None = None,
        out: str | None = None, threads: int | None = None, checkpoints: int = 0,
        closures: int = 3, twins: Sequence[str] | None = None) -> list[dict]:
  """Throughput rows for `methods`, then (with ``compare="quantus"``) one row
  per Quantus twin of `twins` (``["all"]``: every twin; None: none)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import saljax

  device = jax.devices()[0]
  model = _load(model_name, dtype, image_size)
  photos = list(saljax.data.photos().values())
  imgs = [photos[i % len(photos)] for i in range(batch)]
  x = model.preprocess(imgs) if model_name.startswith("efficientnet_lite") else \
      jax.random.normal(jax.random.key(0), (batch,) + model.input_shape)
  if image_size and model_name.startswith("efficientnet_lite") and x.shape[1] != image_size:
    x = jax.image.resize(x, (batch, image_size, image_size, x.shape[-1]), "bilinear")
  x = x.astype(jnp.float32)
  target = jnp.argmax(model(x.astype(jnp.dtype(dtype))), -1).astype(jnp.int32)

  cd = jnp.dtype(dtype)
  # The yardsticks take the model as an argument, as the explainers do (as
  # closed-over constants, XLA could fold part of the work away).
  fwd = jax.jit(lambda m, x: m(x.astype(cd)))
  grad = jax.jit(jax.grad(
      lambda x, m: jnp.take_along_axis(m(x.astype(cd)), target[:, None], 1).astype(jnp.float32).sum()))
  # A fresh process runs its first calls slowly (Lite0's forward at half speed
  # for a few calls on the 2-core CPU VM); the yardsticks come first, so they
  # get warm-up calls the methods after them do not need.
  for _ in range(WARMUP_CALLS):
    jax.block_until_ready((fwd(model, x), grad(x, model)))
  _, t_fwd = _time(lambda: fwd(model, x), repeats)
  _, t_grad = _time(lambda: grad(x, model), repeats)
  forward_ips, gradient_ips = batch / t_fwd, batch / t_grad
  logging.info("forward %.2f images/s, gradient %.2f images/s", forward_ips, gradient_ips)

  net = None
  if compare in ("captum", "quantus"):
    import torch  # noqa: F401  (only for the comparison)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    tdev = "cuda" if device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    net = _torch_reference(model_name).to(tdev)
    x_nchw = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(tdev)
    t_torch = torch.from_numpy(np.array(target)).long().to(tdev)

  rows = []
  for name in methods:
    entry = _entry(name)
    is_metric = name not in saljax.explainers.names()
    layer = _is_layer(entry)
    opts, evals = method_options(name, steps, chunk, x, model, dtype)
    if is_metric:
      attr = saljax.gradient(model, x, target)
      call_on = lambda fm: entry.fn(fm, x, attr, target, **opts)
    else:
      call_on = lambda fm: entry.fn(fm, x, target, **opts)
    f = model.tapped if layer else model
    call = lambda: call_on(f)
    common = {"method": name, "model": model_name, "device": device.device_kind,
              "platform": device.platform, "batch": batch, "dtype": dtype, "steps": steps,
              "chunk": chunk, "date": time.strftime("%Y-%m-%d")}
    rss0 = _rss_mb()
    try:
      timing = _time_compiled(call, repeats)
    except Exception as e:  # report and go on: one method must not stop the run
      logging.error("%s failed: %s", name, e)
      rows.append({"method": name, "error": f"{type(e).__name__}: {e}"})
      continue
    steady = timing["steady_s"]
    row = {
        "kind": "throughput", **common, "images_per_s": batch / steady,
        "compile_s": timing["compile_s"], "compiles": timing["compiles"],
        "trace_s": timing["trace_s"], "first_call_s": timing["first_s"],
        "steady_compiles": timing["steady_compiles"],
        "peak_memory_mb": _peak_memory_mb(device, rss0),
        "forward_images_per_s": forward_ips, "gradient_images_per_s": gradient_ips,
        "model_evals": evals,
    }
    if evals:
      row["model_evals_per_s"] = evals * batch / steady
      yard = (gradient_ips if entry.backward else forward_ips) / evals
      row["yardstick_ratio"] = row["images_per_s"] / yard
    try:
      if not is_metric:
        lowered = jax.jit(lambda fm, x, t: entry.fn(fm, x, t, **opts)).lower(f, x, target)
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) / batch if cost else None
        row["flops_per_image"] = flops
        peak = _peak_flops(device, dtype)
        if flops and peak:
          row["peak_fraction"] = flops * row["images_per_s"] / peak
    except Exception as e:  # cost analysis is best effort (not every backend reports it)
      logging.warning("no cost analysis for %s: %s", name, e)
    if net is not None:
      # The torch port reuses one activation module for stem and head, so
      # Captum's Grad-CAM hooks the head's batch norm (the same map up to the
      # activation, which saljax's default layer includes).
      if compare == "quantus":
        runner = _quantus_runner(name, net, x_nchw, t_torch, attr if is_metric else None,
                                 steps, chunk) if is_metric else None
      else:
        runner = _captum_runner(name, net, x_nchw, t_torch, steps, chunk,
                                layer=getattr(net, "_bn1", None))
      if runner is not None:
        import torch

        last = []  # the baseline's latest output, to compare with saljax's

        def synced(runner=runner):
          out = runner()
          last[:] = [out]
          if x_nchw.is_cuda:
            torch.cuda.synchronize()
          return out

        try:
          _, t_base = _time(synced, max(1, repeats - 1))
        except Exception as e:  # e.g. Captum out of memory: report it as the baseline's result
          logging.error("captum %s failed: %s", name, e)
          row.update(baseline=compare, baseline_error=f"{type(e).__name__}: {str(e)[:200]}")
          t_base = None
        if t_base is not None:
          row.update(baseline=compare, baseline_images_per_s=batch / t_base,
                     ratio=(batch / steady) / (batch / t_base))
          if compare == "quantus":
            # Same work: the two curves must agree (saljax's starts at the clean image).
            ours = np.asarray(call()["curve"])[:, 1:]
            row["baseline_max_abs_diff"] = float(np.abs(ours - last[0]).max())
    _emit(row, rows, out)
    if checkpoints > 0:
      try:
        ck = _checkpoint_row(call_on, model, layer, checkpoints, closures, batch)
      except Exception as e:  # report and go on
        logging.error("%s checkpoints failed: %s", name, e)
        ck = {"error": f"{type(e).__name__}: {e}"}
      ck = {"kind": "checkpoints", **common, "same_params_images_per_s": batch / steady, **ck}
      if ck.get("checkpoint_compiles"):
        logging.warning("%s compiled %d times on %d new parameter sets", name,
                        ck["checkpoint_compiles"], checkpoints)
      _emit(ck, rows, out)
  if compare == "quantus" and twins:
    from experiments import _quantus as Q
    names = _twin_names(twins, list(Q.twins()))
    if names:
      common = {"model": model_name, "device": device.device_kind, "platform": device.platform,
                "batch": batch, "dtype": dtype, "date": time.strftime("%Y-%m-%d")}
      twin_rows(model, x, target, net, x_nchw, names, repeats, forward_ips, gradient_ips,
                common, rows, out, model_name=model_name)
  return rows


def _emit(row: dict, rows: list, out: str | None) -> None:
  import saljax
  rows.append(row)
  line = json.dumps(row)
  print(line, flush=True)
  if out and saljax.parallel.is_writer():
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "a") as fh:
      fh.write(line + "\n")


ANSWERS = ("shapley", "completeness", "incremental")


def answer_rows(kinds: Sequence[str], out: str | None = None) -> list[dict]:
  """The answer-quality rows (`ANSWERS`), each row tagged with its kind and
  emitted as it comes; the measuring code lives in ``experiments._answers_*``."""
  rows: list[dict] = []
  for kind in kinds:
    if kind == "shapley":
      from experiments._answers_shapley import shapley_error_rows
      got = shapley_error_rows()
    elif kind == "completeness":
      from experiments._answers_ig import completeness_rows
      result = completeness_rows()
      got = [dict(r) for r in result["rows"]] + [{"verdict": result["target"]}]
    else:
      from experiments._answers_occlusion import incremental_rows
      got = incremental_rows()
    for row in got:
      _emit({"answers": kind, **row}, rows, out)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  bad = [a for a in FLAGS.answers if a not in ANSWERS]
  if bad:
    raise app.UsageError(f"--answers: unknown {bad}; known: {list(ANSWERS)}")
  if FLAGS.answers:
    answer_rows(FLAGS.answers, FLAGS.out)
    return
  import saljax
  known = set(saljax.explainers.names()) | set(saljax.metrics.names())
  unknown = [m for m in FLAGS.methods if m not in known]
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; known: {sorted(known)}")
  run(FLAGS.model, FLAGS.methods, FLAGS.batch, FLAGS.steps, FLAGS.chunk, FLAGS.dtype,
      FLAGS.compare, FLAGS.repeats, FLAGS.image_size, FLAGS.out, FLAGS.threads,
      FLAGS.checkpoints, FLAGS.closures, FLAGS.twins)


if __name__ == "__main__":
  app.run(main)
