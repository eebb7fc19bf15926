"""Runs a bundle's jax.export artifacts with jax and numpy alone (tests start it in a new process).

  python tests/run_stablehlo.py BUNDLE INPUTS.npz OUT.npz

INPUTS.npz holds, for each case C, `C_images` (N, R, img_dim), `C_tokens` (M, T) and
`C_lengths` (M,); OUT.npz gets the (N, M) score matrix of each case under its name, and
`C_vec`, the (N, M) products of the shortlist embeddings. Cases of different sizes check
that the artifacts' sizes are symbolic.
"""
import sys

import jax
import numpy as np


def _load(bundle, name):
  with open(f"{bundle}/stablehlo/{name}.bin", "rb") as f:
    return jax.export.deserialize(f.read())


def main(bundle, inputs, out):
  params = dict(np.load(f"{bundle}/params.npz"))
  enc_img, enc_cap, score, img_vectors, cap_vectors = (_load(bundle, n) for n in (
      "encode_images", "encode_captions", "score_matrix", "image_vectors", "caption_vectors"))
  z = np.load(inputs)
  results = {}
  for case in sorted({k.rsplit("_", 1)[0] for k in z.files}):
    img = enc_img.call(params, z[f"{case}_images"])
    cap, mask = enc_cap.call(params, z[f"{case}_tokens"], z[f"{case}_lengths"])
    results[case] = np.asarray(score.call(params, img, cap, mask))
    img_vec, cap_vec = img_vectors.call(params, img), cap_vectors.call(params, cap, mask)
    results[f"{case}_vec"] = np.asarray(img_vec @ cap_vec.T)
  imported = sorted(m for m in sys.modules if m.split(".")[0] in ("camp_jax", "flax"))
  if imported:
    raise SystemExit(f"the artifacts needed more than jax: {imported} were imported")
  np.savez(out, **results)


if __name__ == "__main__":
  main(*sys.argv[1:4])
