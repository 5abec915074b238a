"""Shared fixtures: small models whose answers are known in closed form."""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# A fresh weight cache per run, so the suite converts the pretrained weights
# itself, as it must on a new machine (set SALJAX_CACHE to reuse one).
os.environ.setdefault("SALJAX_CACHE", tempfile.mkdtemp(prefix="saljax-test-cache-"))
# JAX's persistent compilation cache in a fresh folder per run, shared by the
# xdist workers (they inherit this process's environment) and by the binaries
# and 8-device scripts the tests start in subprocesses: the suite is
# compile-bound, and the same programs are compiled again after each module's
# jax.clear_caches(), in the other worker and in every subprocess. Fresh per run,
# so no run reads what another compiled. Compile counts stay as they were: JAX
# records its backend-compile event around a cache read too. Every program is
# cached (no minimum compile time or size). Set JAX_COMPILATION_CACHE_DIR to
# choose the folder (it is then kept), or to "" to run without the cache.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  _jax_cache = tempfile.mkdtemp(prefix="saljax-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
  # Only the process that made it removes it (the xdist controller, or pytest
  # run serially); workers and subprocesses find the variable set.
  atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def linear_model():
  """f(x) = flatten(x) @ w on inputs [B, 4, 4, 3], 5 classes; returns (f, w)."""
  w = jax.random.normal(jax.random.key(0), (48, 5))
  return (lambda x: x.reshape(x.shape[0], -1) @ w), w


@pytest.fixture
def mlp_model():
  """A random tanh MLP on inputs [B, 4, 4, 3], 5 classes."""
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  w1 = jax.random.normal(k1, (48, 32)) / jnp.sqrt(48.0)
  w2 = jax.random.normal(k2, (32, 5)) / jnp.sqrt(32.0)
  b1 = 0.1 * jax.random.normal(k3, (32,))

  def f(x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + b1)
    return h @ w2

  return f


@pytest.fixture
def images():
  return jax.random.normal(jax.random.key(2), (3, 4, 4, 3))


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
  """Bounds each worker's memory: after a test module, drop JAX's compiled
  programs and traces and hand freed heap back to the OS.

  A pytest-xdist worker runs ~900 tests; JAX keeps every compiled executable
  (and the constants closed over) for the life of the process, and glibc keeps
  freed heap, so a worker's RSS climbed past 5 GB a fifth of the way in. Two
  such workers, notebook kernels and binaries in subprocesses approach a 24 GiB
  machine with no swap, where everything slows to a crawl. After
  tests/test_model_output.py: 1506 MB, then 477 MB after this."""
  yield
  import ctypes
  import gc
  jax.clear_caches()
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: nothing to trim
    pass
