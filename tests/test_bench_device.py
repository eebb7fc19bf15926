"""`python -m camp_jax.bench device`: the first minutes on a machine, at CPU sizes."""
import json
import sys

import pytest

from camp_jax.bench import device
from configs import default
from tests import helpers


def test_device_command_reports_every_section_measured(tiny_data_dir, tmp_path):
  args = [sys.executable, "-m", "camp_jax.bench", "device", "--small", "--images=4",
          "--captions=4", "--steps=1", "--config=configs/default.py:stage2,tiny",
          f"--config.data.dir={tiny_data_dir}", "--json"]
  out = helpers.run(args, tmp_path / "logs" / "device", timeout=300).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert {"platform", "device_kind", "num_devices", "jax", "jaxlib", "plugins", "pooling",
          "scoring", "fast_vs_reference", "train_step", "roofline"} <= set(result)
  assert result["platform"] == "cpu" and result["num_devices"] == 1
  assert result["pooling"] == {"requested": "auto", "kernel": "xla", "used": "xla",
                               "check": None}                # no kernel on the CPU
  ref = result["fast_vs_reference"]
  assert (ref["images"], ref["captions"]) == (4, 4) and ref["score_std"] > 0
  assert ref["max_abs_diff"] < 1e-5
  scored = result["scoring"]
  assert scored["pairs"] == 16 and scored["seconds"] > 0 and scored["pairs_per_s"] > 0
  step = result["train_step"]
  assert step["batch_size"] == 32 and step["variant"] == "gate_fusion" and step["step_s"] > 0
  assert result["roofline"] == {"available": False, "why": "not available on cpu: camp_jax.aot "
                                "has figures for TPU and GPU chips only"}
  assert "fast vs reference: max |diff|" in out and "train step: batch 32" in out


def test_sizes_are_checked_and_chips_found_by_device_kind():
  with pytest.raises(ValueError, match="--images=0"):
    device.run(default.get_config("stage2,tiny"), images=0, captions=8)
  assert device.chip_of("NVIDIA H100 80GB HBM3").name == "h100"
  assert device.chip_of("TPU v5 lite").name == "v5e" and device.chip_of("cpu") is None
