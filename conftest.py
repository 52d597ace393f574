"""Test-session setup shared by every test.

Forces 8 host (CPU) devices so the data-parallel code paths run on every test
run. This must happen before jax is imported anywhere, which is why it lives
in the top-level conftest.py (pytest imports it first).
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow is only used for data loading; keep it off any accelerator and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
