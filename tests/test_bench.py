"""The train-step benchmark measures a real step and says how much work XLA counts in it."""
from camp_jax.bench import train_step
from configs import default


def test_train_step_benchmark_reports_time_and_xla_flops(tiny_data_dir):
  config = default.get_config("tiny")
  config.data.dir = str(tiny_data_dir)
  config.train_caption_chunk = 0
  result = train_step.run(config, steps=1)
  assert result["step_s"] > 0 and result["compile_s"] > 0
  assert result["xla_gflop_is_per_step"] and result["xla_gflop"] > 0
  work = result["gflop_per_s"] * result["step_s"]
  assert abs(work - result["xla_gflop"]) < 1e-6 * result["xla_gflop"]
  text = train_step.describe(result)
  assert "GFLOP per step (XLA)" in text and "peak RSS" in text
