r"""VSE++ baseline on the default synthetic data: pooled embeddings, max-violation hinge.

  python -m camp_jax.main --config=configs/vse.py --workdir=runs/vse
"""
from configs import default


def get_config(arg: str | None = None):
  c = default.get_config(arg)
  c.model.name = "vse"
  c.loss = "max_violation_hinge"
  c.shortlist_loss_weight = 0.0
  return c
