"""nets/cpu_conv.py: the weight gradient by patches equals lax's, and the mode picks the path."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from nets import cpu_conv, layers

NHWC = ("NHWC", "HWIO", "NHWC")
REPO = pathlib.Path(__file__).resolve().parent.parent


def gradients(conv, x, w, strides, padding, **kw):
  """d/dx and d/dw of a loss that weighs every output differently."""

  def loss(x, w):
    y = conv(x, w, strides, padding, dimension_numbers=NHWC, **kw)
    return (y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size).sum()

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


def random_conv(batch, size, in_features, out_features, kernel, dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(0), (batch, size, size, in_features), dtype)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, in_features, out_features), dtype)
  return x, w


@pytest.mark.parametrize(
  "batch,size,features,kernel,strides,padding",
  [
    (16, 32, (16, 16), 3, 1, [(1, 1), (1, 1)]),  # a CIFAR ResNet's first stage: two chunks of 8
    (12, 16, (16, 32), 3, 2, [(1, 1), (1, 1)]),  # the stride-2 conv opening a stage; chunks of 6
    (7, 16, (32, 64), 1, 2, [(0, 0), (0, 0)]),  # option B's 1x1 projection; 7 images: one chunk
    (4, 15, (8, 8), 3, 2, "SAME"),
    (4, 13, (3, 8), 5, 1, "VALID"),
    (2, 12, (4, 6), 7, 2, [(3, 3), (3, 3)]),  # an ImageNet stem
  ],
)
def test_gradients_by_patches_equal_lax(batch, size, features, kernel, strides, padding):
  x, w = random_conv(batch, size, *features, kernel)
  ours = gradients(cpu_conv.ConvGeneralDilated("patches"), x, w, (strides, strides), padding)
  theirs = gradients(lax.conv_general_dilated, x, w, (strides, strides), padding)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_bfloat16_gradient_by_patches_is_as_close_as_lax_s():
  x, w = random_conv(8, 16, 16, 16, 3, jnp.bfloat16)
  exact = gradients(lax.conv_general_dilated, x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), [(1, 1)] * 2)[1]
  ours = gradients(cpu_conv.ConvGeneralDilated("patches"), x, w, (1, 1), [(1, 1)] * 2)[1]
  theirs = gradients(lax.conv_general_dilated, x, w, (1, 1), [(1, 1)] * 2)[1]
  assert ours.dtype == jnp.bfloat16
  error = lambda g: float(jnp.abs(g.astype(jnp.float32) - exact).max() / jnp.abs(exact).max())
  assert error(ours) <= max(2 * error(theirs), 1e-2)


def test_grouped_convolutions_and_vmapped_ones_are_right_too():
  x, w = random_conv(4, 8, 8, 8, 3)
  grouped = lambda conv: gradients(conv, x, w[:, :, :4], (1, 1), [(1, 1)] * 2, feature_group_count=2)
  ours = grouped(cpu_conv.ConvGeneralDilated("patches"))
  np.testing.assert_allclose(ours[1], grouped(lax.conv_general_dilated)[1], rtol=1e-5)
  # Several seeds: train.py vmaps the step over a leading axis of weights.
  ws = jnp.stack([w, 2 * w])
  per_seed = lambda conv: jax.vmap(lambda w: gradients(conv, x, w, (1, 1), [(1, 1)] * 2)[1])(ws)
  ours = per_seed(cpu_conv.ConvGeneralDilated("patches"))
  np.testing.assert_allclose(ours, per_seed(lax.conv_general_dilated), rtol=1e-4, atol=1e-3)


def traced_with_patches(mode):
  x, w = random_conv(2, 8, 4, 4, 3)
  conv = cpu_conv.ConvGeneralDilated(mode)
  jaxpr = jax.make_jaxpr(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC))(x, w)
  return "custom_vjp" in str(jaxpr)


def test_the_mode_picks_the_weight_gradient():
  assert traced_with_patches("patches") and not traced_with_patches("lax")
  assert traced_with_patches("auto") == (jax.default_backend() == "cpu")  # patches on CPU only
  for make in (
    cpu_conv.ConvGeneralDilated,
    cpu_conv.conv_general_dilated_cls,
    lambda mode: layers.conv_factory(jnp.float32, mode),
  ):
    with pytest.raises(ValueError, match="conv_weight_grad must be one of"):
      make("fast")


def test_the_nets_convolutions_are_cpu_conv_s_through_flax_s_current_field():
  x = jnp.ones((2, 8, 8, 4))

  def traced_gradient(mode):
    conv = layers.conv_factory(jnp.float32, mode)(4, (3, 3))
    # flax marks `conv_general_dilated` "Deprecated. Will be removed."; a newer flax would break every net.
    assert conv.conv_general_dilated is None
    params = conv.init(jax.random.key(0), x)
    return str(jax.make_jaxpr(lambda p: jax.grad(lambda p: conv.apply(p, x).sum())(p))(params))

  assert "custom_vjp" in traced_gradient("patches") and "custom_vjp" not in traced_gradient("lax")


@pytest.fixture
def cpu_backend_ahead(monkeypatch):
  """What use_fast_xla_cpu_flags sees where JAX is going to start on the CPU."""
  monkeypatch.setattr(cpu_conv, "requested_platforms", lambda: "")
  monkeypatch.setattr(cpu_conv, "accelerator_plugins", lambda: [])
  monkeypatch.delenv("PJRT_NAMES_AND_LIBRARY_PATHS", raising=False)
  return monkeypatch


def test_fast_xla_cpu_flags_are_added_once_and_leave_the_users_own(cpu_backend_ahead):
  cpu_backend_ahead.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  cpu_conv.use_fast_xla_cpu_flags()
  cpu_conv.use_fast_xla_cpu_flags()
  assert os.environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=2",
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
  ]
  cpu_backend_ahead.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  cpu_conv.use_fast_xla_cpu_flags()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


@pytest.mark.parametrize(
  "platforms, plugins, environ, cpu",
  [
    ("", [], {}, True),  # a CPU-only jax
    ("cpu", ["xla_cuda12"], {}, True),  # JAX_PLATFORMS=cpu beside a CUDA plugin
    ("", ["xla_cuda12"], {}, False),  # jax[cuda12]
    ("", ["libtpu"], {}, False),
    ("cuda", [], {}, False),
    ("tpu,cpu", [], {}, False),  # the first platform is the default one
    (" CPU ,cuda", ["xla_cuda12"], {}, True),
    ("", [], {"PJRT_NAMES_AND_LIBRARY_PATHS": "gpu:/opt/libgpu.so"}, False),
  ],
)
def test_the_backend_is_foreseen_from_the_platforms_asked_and_the_plugins_installed(platforms, plugins, environ, cpu):
  assert cpu_conv.backend_will_be_cpu(platforms, plugins, environ) is cpu


def test_no_cpu_flag_where_the_backend_will_be_an_accelerator(cpu_backend_ahead):
  cpu_backend_ahead.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/dump")
  cpu_backend_ahead.setattr(cpu_conv, "accelerator_plugins", lambda: ["xla_cuda12"])
  cpu_conv.use_fast_xla_cpu_flags()
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/dump"
  cpu_backend_ahead.setattr(cpu_conv, "requested_platforms", lambda: "cpu")
  cpu_conv.use_fast_xla_cpu_flags()
  assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in os.environ["XLA_FLAGS"]


def test_an_installed_plugin_is_found_as_jax_finds_it(tmp_path):
  # A fake jax[cuda] in a fresh process: a module in the jax_plugins namespace package.
  (tmp_path / "jax_plugins" / "xla_fake_gpu").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "xla_fake_gpu" / "__init__.py").write_text("")
  script = textwrap.dedent("""
      import os
      from nets import cpu_conv
      print("plugins:", cpu_conv.accelerator_plugins())
      cpu_conv.use_fast_xla_cpu_flags()
      print("XLA_FLAGS:", repr(os.environ["XLA_FLAGS"]))
      """)
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "XLA_FLAGS": "", "JAX_PLATFORMS": ""}
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "xla_fake_gpu" in done.stdout and "XLA_FLAGS: ''" in done.stdout


def test_installed_xla_accepts_the_flags_and_keeps_convolutions_from_ynnpack():
  # A fresh process: the flags take effect only before JAX starts its backend, and an
  # XLA that no longer knows one would abort there.
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp
      from jax import lax
      from nets import cpu_conv, layers
      cpu_conv.use_fast_xla_cpu_flags()
      conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=cpu_conv.NHWC)
      hlo = jax.jit(conv).lower(jnp.ones((128, 8, 8, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
      # Without the flags, this layer of ResNet-56 is one `ynn_fusion` (jax 0.10).
      print("ynn fusions:", sum("ynn" in line for line in hlo.splitlines()))
      """)
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "ynn fusions: 0" in done.stdout
