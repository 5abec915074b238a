"""Quantus twins of the randomization metrics.

These metrics re-explain, so both sides run the same explainer: the gradient
of the target logit summed over channels (`gradient_map` in JAX,
`torch_gradient_map` in torch, the same function to float rounding), a
``[B, H, W]`` map (Quantus: ``[B, 1, H, W]``). Summing inside the explainer
makes Quantus' per-coordinate ``abs`` and saljax's per-pixel maps the same
thing. Both sides compute the original explanation themselves
(``attribution=None`` / ``a_batch=None``).

The same random draws reach Quantus:
- re-initialized layers: Quantus re-initializes with torch's
  ``reset_parameters``; `saljax_draws` patches ``reset_parameters`` of
  ``Conv2d`` and ``Linear`` to load the layer's draw from
  `saljax.metrics.random_parameters` instead (Quantus' own generator, order and
  cascading logic are untouched);
- SmoothMPRT's input noise: ``np.random.randn`` answers with saljax's normal
  draws, the same for every model, as saljax uses them;
- RandomLogit's off class: ``np.random.randint`` answers with the index of
  saljax's `random_other_class` among the classes Quantus keeps.

The randomization runners need the JAX model as a function of its parameters:
the caller adds ``model_fn`` (``model_fn(params, x) -> logits``) and
``params`` (a flax params pytree, kernels in flax layout) to the context, i.e.
``ctx = {**twin.context(x, y, seed), "model_fn": ..., "params": ...}``, and,
where the flax layer names are not the torch module names, ``layer_map``: the
``(torch module name, flax layer path)`` pairs of every module Quantus
re-initializes (those with ``reset_parameters``), in torch's module order
(input first; `efficientnet_lite_layer_map` builds it for EfficientNet-Lite).
Both sides then randomize the same layers in the same order: saljax gets the
flax paths as its `layer` list, the patched ``reset_parameters`` loads each
torch module's draw from its flax path. Without ``layer_map`` the flax
top-level names are the torch names (the parity CNN).

Batch norm: Quantus re-initializes every module with ``reset_parameters``,
batch norms included, whose own reset sets scale 1, shift 0 and the running
statistics to 0 / 1 (not a random draw). saljax randomizes the parameters of
a layer and never its running statistics (`layer_names`: the reference code
leaves moving means and variances alone), so the patched reset loads saljax's
draws into a batch norm's weight and bias and keeps its running statistics;
the two libraries then randomize the same 99 layers of Lite0 (stem, 16 blocks'
expand / depthwise / project convolutions and their batch norms, head, fc).
"""
from __future__ import annotations

import contextlib
import copy
from unittest import mock

import numpy as np

from experiments._quantus import QuantusTwin

_QUANTUS = "quantus/metrics/randomisation"


def gradient_map(f, x, target, *, key=None):
  """The explainer under test (JAX): d logit_target / d x summed over channels, [B, H, W]."""
  import saljax
  return saljax.explainers.gradient(f, x, target).sum(-1)


def torch_gradient_map(model, inputs, targets, **kwargs):
  """The same explainer in torch, as Quantus calls it: [B, 1, H, W] numpy."""
  import torch
  x = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
  out = model(x)
  t = torch.as_tensor(np.asarray(targets).reshape(-1), dtype=torch.long)
  g, = torch.autograd.grad(out[torch.arange(len(t)), t].sum(), x)
  return g.sum(1, keepdim=True).detach().numpy()


def _torch_layout(leaf_name, value):
  v = np.asarray(value, np.float32)
  if leaf_name == "kernel":
    # flax Conv [kh, kw, in, out] -> torch [out, in, kh, kw]; Dense [in, out] -> [out, in].
    v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
  return v.copy()


def _lookup(tree, path: str):
  """The sub-dict of a nested params dict at a flax path ``"a/b/c"``."""
  for part in path.split("/"):
    tree = tree[part]
  return tree


def resettable(net) -> list[str]:
  """Names of the modules of `net` Quantus re-initializes (those with
  ``reset_parameters``), in module order (input first)."""
  return [n for n, m in net.named_modules() if n and hasattr(m, "reset_parameters")]


def efficientnet_lite_layer_map(net) -> list[tuple[str, str]]:
  """``(torch module, flax layer path)`` for every module of an
  efficientnet_lite_pytorch model that Quantus re-initializes, in module order;
  the flax paths are those of `saljax.models.pretrained`'s conversion
  (``convert_state_dict``) under ``"params"``. Raises on a module it cannot place."""
  import re
  blocks = {"_expand_conv": "expand/conv", "_bn0": "expand/bn", "_depthwise_conv":
            "depthwise/conv", "_bn1": "depthwise/bn", "_project_conv": "project/conv",
            "_bn2": "project/bn"}
  top = {"_conv_stem": "stem/conv", "_bn0": "stem/bn", "_conv_head": "head/conv",
         "_bn1": "head/bn", "_fc": "fc"}
  out = []
  for name in resettable(net):
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", name)
    if m and m.group(2) in blocks:
      out.append((name, f"params/blocks_{m.group(1)}/{blocks[m.group(2)]}"))
    elif name in top:
      out.append((name, f"params/{top[name]}"))
    else:
      raise ValueError(f"efficientnet_lite_layer_map: no flax layer for torch module {name!r}")
  return out


def _torch_names(net, layer_map):
  return [t for t, _ in layer_map] if layer_map is not None else resettable(net)


def _flax_layers(layer_map, top_down: bool):
  """saljax's `layer` list for `layer_map` (None: the metric's default)."""
  if layer_map is None:
    return None
  names = [f for _, f in layer_map]
  return tuple(reversed(names)) if top_down else tuple(names)


@contextlib.contextmanager
def saljax_draws(net, random_params, layer_map=None):
  """`net` copied, its Conv2d / Linear / BatchNorm2d modules tagged with their
  flax layer (`layer_map`, else the torch name), and their ``reset_parameters``
  patched to load that layer of `random_params` (flax names and layout)
  instead of drawing torch's own (a batch norm keeps its running statistics,
  as saljax does). Yields the copy."""
  import torch
  net = copy.deepcopy(net)
  where = dict(layer_map) if layer_map is not None else {}
  for name, module in net.named_modules():
    if name:
      module._saljax_layer = where.get(name, name)

  def reset(self):
    layer = _lookup(random_params, self._saljax_layer)
    weight = layer["kernel"] if "kernel" in layer else layer["scale"]
    with torch.no_grad():
      self.weight.copy_(torch.from_numpy(
          _torch_layout("kernel" if "kernel" in layer else "scale", weight)))
      if self.bias is not None:
        self.bias.copy_(torch.from_numpy(_torch_layout("bias", layer["bias"])))

  with mock.patch.object(torch.nn.Conv2d, "reset_parameters", reset), \
       mock.patch.object(torch.nn.Linear, "reset_parameters", reset), \
       mock.patch.object(torch.nn.BatchNorm2d, "reset_parameters", reset):
    yield net


def _context(x_nhwc, y, seed):
  return {"seed": int(seed)}


def _key(seed):
  import jax
  return jax.random.key(seed)


def _random(params, seed, init=None):
  import jax
  import saljax
  return jax.tree_util.tree_map(np.asarray,
                                saljax.metrics.random_parameters(params, _key(seed), init))


def matched_scale_init(key, leaf):
  """A leaf's random draw at the trained leaf's own scale: truncated normal (2
  std), mean 0, std = the leaf's standard deviation. For deep networks: with
  Adebayo et al.'s fixed std 0.01 every randomized layer shrinks the signal
  about 100-fold, so EfficientNet-Lite0 with its 99 layers randomized has an
  input gradient of exactly 0 in float32, and Quantus refuses all-zero maps
  (EfficientMPRT: "The elements in the attribution vector are all equal to
  zero"). The benchmark passes this as ``init`` on Lite0 (both libraries get
  the same draws); the parity CNN keeps the default."""
  import jax
  import jax.numpy as jnp
  std = jnp.std(leaf.astype(jnp.float32))
  return (std * jax.random.truncated_normal(key, -2.0, 2.0, leaf.shape, jnp.float32)).astype(
      leaf.dtype)


def _layers(out, names):
  """Quantus' {layer: scores} as the saljax curve [B, len(names)]."""
  return np.stack([np.asarray(out[n], np.float64) for n in names], 1)


# --- MPRT (cascading, top-down: Adebayo et al. and Quantus' default) ---------

def _mprt_saljax(f, x, a, y, *, seed, model_fn, params, layer_map=None,
                 init=None):
  import saljax
  out = saljax.metrics.model_parameter_randomization(
      model_fn, x, None, y, params=params, key=_key(seed), explainer=gradient_map,
      similarity="spearman", absolute=True, layer=_flax_layers(layer_map, top_down=True),
      init=init)
  return np.asarray(out["curve"], np.float64)


def _mprt_quantus(net, x, a, y, *, seed, model_fn, params, layer_map=None,
                  init=None):
  import quantus
  metric = quantus.MPRT(layer_order="top_down", abs=True, normalise=False,
                        disable_warnings=True)
  with saljax_draws(net, _random(params, seed, init), layer_map) as tnet:
    out = metric(model=tnet, x_batch=np.asarray(x), y_batch=np.asarray(y), a_batch=None,
                 explain_func=torch_gradient_map, device="cpu", channel_first=True,
                 softmax=False)
  return _layers(out, _torch_names(net, layer_map)[::-1])


# --- SmoothMPRT (cascading, bottom-up) --------------------------------------

SMOOTH_SAMPLES = 4


def _smooth_saljax(f, x, a, y, *, seed, model_fn, params, layer_map=None,
                   init=None):
  import saljax
  out = saljax.metrics.smooth_mprt(
      model_fn, x, None, y, params=params, key=_key(seed), explainer=gradient_map,
      samples=SMOOTH_SAMPLES, noise_magnitude=0.1, similarity="spearman", absolute=True,
      layer=_flax_layers(layer_map, top_down=False), init=init)
  return np.asarray(out["curve"], np.float64)


def _smooth_noise(x_nhwc, seed):
  """saljax's standard-normal draws for smooth_mprt, NCHW, one per noisy sample."""
  import jax
  from saljax.metrics import randomization as R
  z = jax.random.normal(R._noise_key(_key(seed)), (SMOOTH_SAMPLES - 1,) + tuple(x_nhwc.shape))
  return np.asarray(z).transpose(0, 1, 4, 2, 3)


def _smooth_quantus(net, x, a, y, *, seed, model_fn, params, layer_map=None,
                    init=None):
  import quantus
  z = _smooth_noise(np.asarray(x).transpose(0, 2, 3, 1), seed)
  calls = [0]

  def randn(*shape):  # Quantus draws SAMPLES - 1 per model; saljax reuses one set
    out = z[calls[0] % len(z)]
    calls[0] += 1
    assert out.shape == shape, (out.shape, shape)
    return out

  metric = quantus.SmoothMPRT(layer_order="bottom_up", nr_samples=SMOOTH_SAMPLES,
                              noise_magnitude=0.1, abs=True, normalise=False,
                              disable_warnings=True)
  with saljax_draws(net, _random(params, seed, init), layer_map) as tnet, \
       mock.patch.object(np.random, "randn", randn), \
       mock.patch("quantus.explain", torch_gradient_map):
    out = metric(model=tnet, x_batch=np.asarray(x), y_batch=np.asarray(y), a_batch=None,
                 explain_func=torch_gradient_map, device="cpu", channel_first=True,
                 softmax=False)
  return _layers(out, _torch_names(net, layer_map))


# --- EfficientMPRT (all layers randomized, bottom-up cascade's last stage) ---

def _efficient_saljax(f, x, a, y, *, seed, model_fn, params, layer_map=None,
                      init=None):
  import saljax
  return np.asarray(saljax.metrics.efficient_mprt(
      model_fn, x, None, y, params=params, key=_key(seed), explainer=gradient_map, bins=100,
      absolute=False, layer=_flax_layers(layer_map, top_down=False), init=init), np.float64)


def _efficient_quantus(net, x, a, y, *, seed, model_fn, params, layer_map=None,
                       init=None):
  import quantus
  metric = quantus.EfficientMPRT(layer_order="bottom_up", skip_layers=True,
                                 complexity_func_kwargs={"n_bins": 100}, abs=False,
                                 normalise=False, disable_warnings=True)
  with saljax_draws(net, _random(params, seed, init), layer_map) as tnet:
    out = metric(model=tnet, x_batch=np.asarray(x), y_batch=np.asarray(y), a_batch=None,
                 explain_func=torch_gradient_map, device="cpu", channel_first=True)
  return np.asarray(out, np.float64)


# --- RandomLogit ------------------------------------------------------------

def _other(y, seed, n):
  import jax.numpy as jnp
  import saljax
  return np.asarray(saljax.metrics.random_other_class(_key(seed), jnp.asarray(y, jnp.int32), n))


def _logit_saljax(f, x, a, y, *, seed, model_fn=None, params=None, layer_map=None,
                  init=None):
  import saljax
  return np.asarray(saljax.metrics.random_logit(
      f, x, None, y, key=_key(seed), explainer=gradient_map, similarity="spearman",
      absolute=False), np.float64)


def _logit_quantus(net, x, a, y, *, seed, model_fn=None, params=None, layer_map=None,
                   init=None):
  import quantus
  import torch
  y = np.asarray(y)
  with torch.no_grad():
    n = int(net(torch.as_tensor(np.asarray(x[:1]), dtype=torch.float32)).shape[1])
  other = _other(y, seed, n)
  # Quantus picks y_off = (classes without y)[index]: the index of saljax's class there.
  index = np.where(other < y, other, other - 1)
  metric = quantus.RandomLogit(num_classes=n, similarity_func=quantus.similarity_func.correlation_spearman,
                               abs=False, normalise=False, disable_warnings=True)
  with mock.patch.object(np.random, "randint", lambda lo, hi, size: index[:size].copy()):
    out = metric(model=net, x_batch=np.asarray(x), y_batch=y, a_batch=None,
                 explain_func=torch_gradient_map, device="cpu", channel_first=True,
                 softmax=False)
  return np.asarray(out, np.float64)


def _count(metric: str, top_down: bool = False, original: int = 1, **opts):
  """``(f, x, ctx) -> int``: the registry's count for the twin's options plus
  the `original` evaluations of the unrandomized map (the runners pass
  ``attribution=None``; SmoothMPRT smooths it too)."""
  def count(f, x, ctx):
    import saljax
    entry = saljax.metrics.entry(metric)
    if "params" in entry.needs:
      more = dict(params=ctx["params"], layer=_flax_layers(ctx.get("layer_map"), top_down))
      f = ctx["model_fn"]
    else:
      more = {}
    return entry.cost(f, x, explainer=gradient_map, **more, **opts) + original
  return count


TWINS = [
    QuantusTwin(
        metric="model_parameter_randomization", quantus="MPRT",
        run_saljax=_mprt_saljax, run_quantus=_mprt_quantus, context=_context,
        evaluations=_count("model_parameter_randomization", top_down=True),
        # Compared per layer (the curve): with return_average_correlation=True
        # Quantus' mean also averages in the "original" (unrandomized) score,
        # because mprt.py:407 skips a key "orig" that is stored as "original".
    ),
    QuantusTwin(
        metric="smooth_mprt", quantus="SmoothMPRT",
        run_saljax=_smooth_saljax, run_quantus=_smooth_quantus, context=_context,
        evaluations=_count("smooth_mprt", original=SMOOTH_SAMPLES,
                           samples=SMOOTH_SAMPLES)),
    QuantusTwin(
        metric="efficient_mprt", quantus="EfficientMPRT",
        run_saljax=_efficient_saljax, run_quantus=_efficient_quantus, context=_context,
        evaluations=_count("efficient_mprt")),
    QuantusTwin(
        metric="random_logit", quantus="RandomLogit",
        # Spearman on both sides: Quantus' default SSIM (skimage, 7x7 uniform
        # window, data range of the pair) is not saljax's SSIM (Gaussian 11x11
        # window on min-max scaled maps), and needs maps larger than the parity
        # model's 8x8.
        run_saljax=_logit_saljax, run_quantus=_logit_quantus, context=_context,
        evaluations=_count("random_logit")),
]
