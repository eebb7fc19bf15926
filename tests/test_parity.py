"""The converted reference checkpoints reproduce the original PyTorch outputs.

Everything goes through the public path: `camp_jax.convert` -> bundle -> `camp_jax.inference`.
"""
import numpy as np
import pytest

from camp_jax import cli, inference, losses
from camp_jax.convert import __main__ as convert_cli

FIXTURES = ["camp_gate_fusion_small", "camp_cross_attention_small"]


@pytest.fixture(scope="module", params=FIXTURES)
def converted(request, torch_fixture_dir, tmp_path_factory):
  path = torch_fixture_dir / f"{request.param}.npz"
  out = tmp_path_factory.mktemp(request.param) / "bundle"
  assert cli.call(convert_cli.main, ["--from_torch", str(path), "--out", str(out)]) == 0
  with np.load(path) as z:
    reference = {k: z[k] for k in z.files}
  return request.param, inference.load(out), reference


def test_variant_and_sizes_inferred(converted):
  name, model, ref = converted
  config = model.model_config
  assert config["variant"] == ("gate_fusion" if "gate" in name else "cross_attention")
  assert (config["img_dim"], config["embed_dim"]) == ref["param/img_enc.fc.weight"].shape[::-1]
  assert (config["vocab_size"], config["word_dim"]) == ref["param/txt_enc.embed.weight"].shape


def test_embeddings_scores_and_loss_match_original(converted):
  _, model, ref = converted
  img_emb = model.encode_images(ref["input/images"])
  np.testing.assert_allclose(img_emb, ref["output/img_emb"], atol=1e-5, rtol=0)

  cap_emb, cap_mask = model.encode_captions(ref["input/captions"], ref["input/lengths"])
  width = cap_emb.shape[1]
  np.testing.assert_allclose(cap_emb, ref["output/cap_emb"][:, :width], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(cap_mask, ref["output/cap_mask"][:, :width].astype(bool))
  assert not ref["output/cap_emb"][:, width:].any()  # The original's extra slots are zeros.

  scores = model.score_matrix(img_emb, cap_emb, cap_mask)
  np.testing.assert_allclose(scores, ref["output/scores"], atol=1e-5, rtol=0)
  loss = float(losses.hardest_negative_bce(scores))
  np.testing.assert_allclose(loss, ref["output/loss"], rtol=1e-5)
