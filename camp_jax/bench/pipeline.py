"""TEMP(lead): the input-pipeline benchmark moves here when the data branch lands."""
from camp_jax.data import benchmark


def run(*, regions, feature_dim, images, batch_size, steps, backend) -> dict:
  return benchmark.run(regions=regions, feature_dim=feature_dim, images=images,
                       batch_size=batch_size, steps=steps, warmup=5, backend=backend)


def describe(r: dict) -> str:
  return (f"{r['pairs_per_s']:.0f} image-caption pairs/s ({r['ms_per_batch']:.1f} ms per batch "
          f"of {r['batch_size']}; backend {r['backend']}, {r['cpus']} CPUs)")
