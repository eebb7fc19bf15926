r"""Exports a training run (or a bundle) as an inference bundle, optionally with StableHLO.

  python -m camp_jax.export --workdir=RUN --out=BUNDLE [--checkpoint=best|latest|STEP] [--stablehlo]
  python -m camp_jax.export --bundle=IN [--out=BUNDLE] --stablehlo

The bundle is the converter's format (`camp_jax.bundle`), loadable by `camp_jax.inference.load`.
`--stablehlo` adds serialized `jax.export` artifacts with symbolic sizes:

  BUNDLE/stablehlo/encode_images.bin         (params, images f32[N, R, img_dim]) -> f32[N, R, d]
  BUNDLE/stablehlo/encode_captions.bin       (params, tokens i32[M, T], lengths i32[M])
                                                -> f32[M, T', d], bool[M, T']
  BUNDLE/stablehlo/score_matrix.bin          (params, f32[N, R, d], f32[M, L, d], bool[M, L])
                                                -> f32[N, M]
  BUNDLE/stablehlo/image_vectors.bin         (params, f32[N, R, d]) -> f32[N, d]
  BUNDLE/stablehlo/caption_vectors.bin       (params, f32[M, L, d], bool[M, L]) -> f32[M, d]
  BUNDLE/stablehlo/signatures.json, README.md

`params` is the flat dict of `BUNDLE/params.npz` (`dict(np.load(...))`), passed as the first
argument, so the artifacts stay small and run with jax and numpy alone:

  exp = jax.export.deserialize(open("BUNDLE/stablehlo/score_matrix.bin", "rb").read())
  scores = exp.call(dict(np.load("BUNDLE/params.npz")), img_emb, cap_emb, cap_mask)
"""
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from camp_jax import bundle, checkpoints, files, models, scoring

ARTIFACT_VERSION = 1
STABLEHLO_DIR = "stablehlo"
# Lowered for all of these, so one file serves CPU, GPU and TPU hosts.
PLATFORMS = ("cpu", "cuda", "tpu")


def _dims(spec: str, scope, constraints=()):
  return jax.export.symbolic_shape(spec, scope=scope, constraints=constraints)


IMAGE_GROUP = 8  # Images scored together in the exported score_matrix.


def caption_block_for(embed_dim: int) -> int:
  """Captions per block of the exported `score_matrix`: IMAGE_GROUP images x the block
  make a CPU-cache-sized working set, as `scoring.score_matrix`'s tiles do."""
  pairs = scoring.default_tile_bytes("cpu") // scoring.pair_bytes(36, 24, embed_dim)
  return max(1, pairs // IMAGE_GROUP)


def _trimmed(width, fn):
  """fn(emb, mask) on the first `width` word slots (zero-padded up to it); None: all."""
  def call(emb, mask):
    if width is None:
      return fn(emb, mask)
    keep = jax.core.min_dim(width, emb.shape[1])
    pad = ((0, 0), (0, width - keep))
    return fn(jnp.pad(emb[:, :keep], pad + ((0, 0),)), jnp.pad(mask[:, :keep], pad))
  return call


def _by_blocks(fn, xs, block: int, axis: int, other):
  """fn(xs) -> 2-D float32 over blocks of `block` leading rows of the pytree `xs`, then on
  the rest, joined along `axis` (0 or 1); `other` is the size of the other axis.

  A loop whose trip count M // block may be 0 (sizes are symbolic), reading from copies
  padded by one block so that every slice fits.
  """
  m = jax.tree.leaves(xs)[0].shape[0]
  full = m // block * block
  padded = jax.tree.map(lambda x: jnp.pad(x, ((0, block),) + ((0, 0),) * (x.ndim - 1)), xs)
  rows = lambda k: jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, k * block, block),
                                padded)
  out_shape = [m + block, other] if axis == 0 else [other, m + block]

  def body(k, out):
    return jax.lax.dynamic_update_slice_in_dim(out, fn(rows(k)), k * block, axis=axis)

  out = jax.lax.fori_loop(0, m // block, body, jnp.zeros(out_shape, jnp.float32))
  rest = fn(jax.tree.map(lambda x: x[full:], xs))
  return jnp.concatenate([jax.lax.slice_in_dim(out, 0, full, axis=axis), rest], axis=axis)


def _score_matrix_fn(model, block: int):
  """(params, (N, R, d), (M, L, d), (M, L)) -> (N, M).

  CAMP by its hoisted exact path, as `camp_jax.scoring.score_matrix` does it: captions
  sorted by length, in blocks of `block` trimmed to the smallest bucket width that holds
  them (`lax.switch` over the static widths), each block scored against groups of
  IMAGE_GROUP images, so memory is bounded by the image features and one tile. Two-tower
  models score directly.
  """
  if not model.PAIRWISE:
    return lambda params, *args: model.apply({"params": params}, *args, method="score_matrix")
  widths = scoring.DEFAULT_BUCKETS

  def score_matrix(params, img_emb, cap_emb, cap_mask):
    apply = functools.partial(model.apply, {"params": params})
    img = apply(img_emb, method="image_features")

    def scores(emb, mask):                                         # (b, w, d), (b, w) -> (N, b)
      cap = apply(emb, mask, method="caption_features")
      group = lambda i: apply(i, cap, method="pair_scores")                  # (g, b)
      return _by_blocks(group, img, IMAGE_GROUP, 0, emb.shape[0])

    branches = [_trimmed(w, scores) for w in widths] + [_trimmed(None, scores)]
    by_width = lambda emb, mask: jax.lax.switch(
        jnp.searchsorted(jnp.asarray(widths), jnp.max(jnp.sum(mask, 1), initial=0)),
        branches, emb, mask)
    order = jnp.argsort(jnp.sum(cap_mask, 1))
    out = _by_blocks(lambda c: by_width(*c), (cap_emb[order], cap_mask[order]), block, 1,
                     img_emb.shape[0])
    return out[:, jnp.argsort(order)]

  return score_matrix


def _signatures(model_config: dict, caption_block: int | None = None) -> dict:
  """name -> (function of (params, *args), [(arg name, shape spec, dtype)], output names,
  constraints); `caption_block`: captions per block of score_matrix (default by d)."""
  model = models.build(model_config)
  d, img_dim = model_config["embed_dim"], model_config["img_dim"]

  def method(name):
    return lambda params, *args: model.apply({"params": params}, *args, method=name)

  pad = model_config.get("pad_words_to")
  # The stage-1 model pads captions to `pad_words_to` slots; with a symbolic T that test
  # (`T < pad`) cannot be decided, so the artifact asks for T >= pad_words_to instead.
  t_constraints = (f"T >= {pad}",) if pad else ()
  embeddings = [("img_emb", f"N, R, {d}", "float32"), ("cap_emb", f"M, L, {d}", "float32"),
                ("cap_mask", "M, L", "bool")]
  sigs = {
      "encode_images": (method("encode_images"), [("images", f"N, R, {img_dim}", "float32")],
                        ["img_emb"], ()),
      "encode_captions": (method("encode_captions"), [("tokens", "M, T", "int32"),
                                                      ("lengths", "M", "int32")],
                          ["cap_emb", "cap_mask"], t_constraints),
      "score_matrix": (_score_matrix_fn(model, caption_block or caption_block_for(d)),
                       embeddings, ["scores"], ()),
  }
  sigs["image_vectors"] = (method("image_vectors"), embeddings[:1], ["img_vec"], ())
  sigs["caption_vectors"] = (method("caption_vectors"), embeddings[1:], ["cap_vec"], ())
  return sigs


def export_functions(model_config: dict, params,
                     caption_block: int | None = None) -> tuple[dict, dict]:
  """Lowers the model's functions with symbolic sizes (`caption_block`: see _signatures).

  Returns:
    ({name: jax.export.Exported}, {name: JSON-able description of its signature}).
  """
  flat = bundle.flatten_params(params)
  param_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
  exported, described = {}, {}
  for name, (fn, args, outputs, constraints) in _signatures(model_config, caption_block).items():
    scope = jax.export.SymbolicScope(constraints)
    specs = [jax.ShapeDtypeStruct(_dims(shape, scope), jnp.dtype(dtype))
             for _, shape, dtype in args]

    def with_flat_params(flat_params, *xs, fn=fn):
      return fn(bundle.unflatten_params(flat_params), *xs)

    try:
      exp = jax.export.export(jax.jit(with_flat_params), platforms=PLATFORMS)(param_specs, *specs)
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(f"jax.export of {name} failed: {e}") from e
    exported[name] = exp
    described[name] = {
        "file": f"{name}.bin",
        "inputs": [{"name": "params", "shape": "dict of params.npz arrays"}] + [
            {"name": n, "shape": f"({shape})", "dtype": dtype} for n, shape, dtype in args],
        "outputs": [{"name": n, "shape": str(a.shape).replace("'", ""), "dtype": str(a.dtype)}
                    for n, a in zip(outputs, exp.out_avals)],
        "constraints": list(constraints),
    }
  return exported, described


_README = """# StableHLO artifacts of this bundle

Serialized with `jax.export` (jax {jax_version}, platforms {platforms}); they need jax and
numpy only. Sizes in capitals are symbolic (any value at call time); see signatures.json.

```python
import jax, numpy as np
params = dict(np.load("params.npz"))          # first argument of every function
load = lambda n: jax.export.deserialize(open(f"stablehlo/{{n}}.bin", "rb").read())
img_emb = load("encode_images").call(params, images)            # f32[N, R, {img_dim}]
cap_emb, cap_mask = load("encode_captions").call(params, tokens, lengths)
scores = load("score_matrix").call(params, img_emb, cap_emb, cap_mask)   # (N, M)
```

Tokens are vocabulary ids (`vocab.json`) of `[<start>, words..., <end>]` padded with 0;
lengths count the real ids. {notes}
"""


def write_stablehlo(bundle_dir: str | os.PathLike, model_config: dict, params) -> pathlib.Path:
  """Writes BUNDLE/stablehlo/{*.bin, signatures.json, README.md}; returns that folder."""
  out = pathlib.Path(bundle_dir) / STABLEHLO_DIR
  exported, described = export_functions(model_config, params)
  out.mkdir(parents=True, exist_ok=True)
  for name, exp in exported.items():
    (out / f"{name}.bin").write_bytes(exp.serialize())
  meta = {"artifact_version": ARTIFACT_VERSION, "jax_version": jax.__version__,
          "platforms": list(PLATFORMS), "params": "../params.npz", "functions": described}
  (out / "signatures.json").write_text(json.dumps(meta, indent=2) + "\n")
  pad = model_config.get("pad_words_to")
  notes = ("score_matrix computes per-image features of all N images at once (about "
           "7 x R x d floats each), then scores captions block by block; call it on image "
           "tiles to bound memory.")
  if pad:
    notes += f" This stage-1 model needs token arrays with T >= {pad} columns."
  (out / "README.md").write_text(_README.format(jax_version=jax.__version__, platforms=PLATFORMS,
                                                img_dim=model_config["img_dim"], notes=notes))
  return out


def _write_bundle(out: pathlib.Path, params, model_config, vocab, extra, stablehlo: bool,
                  overwrite: bool) -> pathlib.Path:
  """The bundle, with its StableHLO artifacts if asked, written whole at `out` or not at all."""
  bundle.require_local("bundle folder", out)
  with files.atomic_path(out, overwrite) as tmp:
    bundle.write(tmp, params, model_config, vocab, extra)
    if stablehlo:
      write_stablehlo(tmp, model_config, params)
  return out


def export_run(workdir: str | os.PathLike, out: str | os.PathLike, checkpoint="best",
               stablehlo: bool = False, overwrite: bool = False) -> pathlib.Path:
  """Writes the bundle of a training run's checkpoint ("best", "latest" or a step), with the
  vocabulary the run trained with (`checkpoints.run_vocabulary`)."""
  model_config, params, vocab_path = checkpoints.load_trained(workdir, checkpoint)
  vocab = checkpoints.run_vocabulary(workdir, vocab_path)
  params = jax.tree.map(np.asarray, params)
  extra = {"source": str(pathlib.Path(workdir).absolute()), "checkpoint": str(checkpoint)}
  return _write_bundle(pathlib.Path(out), params, model_config, vocab, extra, stablehlo,
                       overwrite)


def export_bundle(bundle_in: str | os.PathLike, out: str | os.PathLike | None = None,
                  stablehlo: bool = True, overwrite: bool = False) -> pathlib.Path:
  """Adds StableHLO artifacts to a bundle: in place (out=None) or as a copy at `out`."""
  model_config, params, vocab, meta = bundle.load(bundle_in)
  if out is None or pathlib.Path(out).absolute() == pathlib.Path(bundle_in).absolute():
    if stablehlo:
      with files.atomic_path(pathlib.Path(bundle_in) / STABLEHLO_DIR) as tmp:
        write_stablehlo(tmp.parent, model_config, params)  # into tmp
    return pathlib.Path(bundle_in)
  extra = {k: v for k, v in meta.items() if k not in ("format_version", "model")}
  return _write_bundle(pathlib.Path(out), params, model_config, vocab, extra, stablehlo,
                       overwrite)
