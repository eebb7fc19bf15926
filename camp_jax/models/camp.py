"""CAMP: cross-modal message aggregation, gated fusion, attention pooling and the score head.

The full model (`variant="gate_fusion"`, the release's `gate_fusion_new`) and the stage-1
model (`variant="cross_attention"`, `cross_attention_new`: mean pooling + cosine) are one
module with an option. Parameter names follow the release (`img_query_fc`, `fc_1`,
`final_reduce_1`, `fc_out`, ...), so freezing patterns and the converter read naturally.

Two ablation switches of the full model (defaults: the release): `gate="open"` holds the
fusion gates at 1 (fusion without adaptive gating); `head="cosine"` scores a pair by the
cosine of its pooled fused vectors instead of the `fc_out` MLP (whose parameters are still
created, so checkpoints, `init_from` and the stage-2 `trainable` patterns do not change, but
never read).

`score_matrix` is the straightforward transcription: it expands every image x caption pair,
as the original does. `fast_score_matrix` computes the same scores by the hoisted exact path
of `camp_fast`, in three steps that the scoring driver tiles and shards: `image_features`,
`caption_features` (once per item) and `pair_scores` (per pair).
"""
import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from camp_jax.models import camp_fast
from camp_jax.models.encoders import CaptionEncoder, ImageEncoder
from camp_jax.models.layers import (attend, attention_weights, l2_normalize, pooled_caption,
                                    pooled_image, symmetric_uniform, torch_default_init)

VARIANTS = ("gate_fusion", "cross_attention")
GATES = ("adaptive", "open")      # model.gate: sigmoid(<x, m>) per row | held at 1
HEADS = ("mlp", "cosine")         # model.head: fc_out on (v, t) | cos(v, t) in [-1, 1]
PROJECTIONS = ("img_query_fc", "img_key_fc", "txt_query_fc", "txt_key_fc",
               "weighted_img_query_fc", "weighted_img_key_fc",
               "weighted_txt_query_fc", "weighted_txt_key_fc")
# The release initialises these with Xavier bounds sqrt(6 / (d + d)); the rest keep
# PyTorch's default.
_XAVIER_D_D = ("img_key_fc", "txt_key_fc")


class AttentionPool(nn.Module):
  """Multi-head attention pooling (`final_reduce_*`): MLP scores, softmax per head, heads averaged.

  (..., L, d), mask (..., L) -> L2-normalised (..., d).
  """
  heads: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               return_weights: bool = False):
    d = x.shape[-1]
    init = torch_default_init(d)
    hidden = nn.relu(nn.Dense(d, dtype=self.dtype, kernel_init=init, bias_init=init,
                              name="hidden")(x))
    logits = nn.Dense(self.heads, dtype=self.dtype, kernel_init=init, bias_init=init,
                      name="heads")(hidden)                                   # (..., L, H)
    if mask is not None:
      logits = jnp.where(mask[..., None], logits, -1e9)
    weights = jax.nn.softmax(logits, axis=-2)
    pooled = l2_normalize(jnp.mean(jnp.swapaxes(weights, -1, -2) @ x, axis=-2))
    return (pooled, weights) if return_weights else pooled


class ScoreHead(nn.Module):
  """`fc_out`: sigmoid(MLP(concat(v, t))), (..., d), (..., d) -> (...)."""
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, v: jax.Array, t: jax.Array, deterministic: bool = True) -> jax.Array:
    d = v.shape[-1]
    init = symmetric_uniform(math.sqrt(6.0 / (d + d)))
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=init,
                              bias_init=nn.initializers.zeros)
    hidden = nn.relu(dense(d, name="hidden")(jnp.concatenate([v, t], axis=-1)))
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    return jax.nn.sigmoid(dense(1, name="out")(hidden))[..., 0]


def fusion_gate(features: jax.Array, messages: jax.Array, gate: str = "adaptive") -> jax.Array:
  """The scalar gate of each row, sigmoid(<x, m>) or 1 (gate="open"): (..., n, d) -> (..., n)."""
  if gate == "open":
    return jnp.ones(features.shape[:-1], features.dtype)
  return jax.nn.sigmoid(jnp.sum(features * messages, axis=-1))


def gated_fusion(fc: nn.Module, features: jax.Array, messages: jax.Array,
                 gate: jax.Array) -> jax.Array:
  """relu(fc(concat(x, m) * g)) + x with the scalar gate g (..., n) of each row."""
  return nn.relu(fc(jnp.concatenate([features, messages], axis=-1) * gate[..., None])) + features


class CrossModalFusion(nn.Module):
  """Scores image-caption pairs from region and word embeddings (the release's `sim`).

  Inputs broadcast over leading pair axes: regions (..., R, d), words (..., L, d),
  word_mask (..., L) bool.
  """
  embed_dim: int
  variant: str = "gate_fusion"
  gate: str = "adaptive"
  head: str = "mlp"
  pool_heads: int = 4
  # Stage-1 only: average the word side over every slot, padding included (the original
  # pads to 50 slots and averages them all); otherwise over the real words.
  mean_over_padding: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"model.variant is {self.variant!r}, expected one of {VARIANTS}")
    for field, value, allowed in (("gate", self.gate, GATES), ("head", self.head, HEADS)):
      if value not in allowed:
        raise ValueError(f"model.{field} is {value!r}, expected one of {allowed}")
      if value != allowed[0] and self.variant != "gate_fusion":
        raise ValueError(f"model.{field}={value!r} applies to the full model only "
                         f"(model.variant='gate_fusion'), not to {self.variant!r}")
    d = self.embed_dim
    xavier = symmetric_uniform(math.sqrt(6.0 / (d + d)))
    for name in PROJECTIONS:
      init = xavier if name in _XAVIER_D_D else torch_default_init(d)
      setattr(self, name, nn.Dense(d, use_bias=False, dtype=self.dtype, kernel_init=init))
    if self.variant == "gate_fusion":
      self.fc_1 = nn.Dense(d, use_bias=False, dtype=self.dtype, kernel_init=xavier)
      self.fc_2 = nn.Dense(d, use_bias=False, dtype=self.dtype, kernel_init=xavier)
      self.final_reduce_1 = AttentionPool(self.pool_heads, dtype=self.dtype)
      self.final_reduce_2 = AttentionPool(self.pool_heads, dtype=self.dtype)
      self.fc_out = ScoreHead(self.dropout_rate, dtype=self.dtype)

  def messages(self, regions, words, word_mask):
    """Message aggregation and the second attention: (Fv (..., R, d), Ft (..., L, d), maps)."""
    word_to_region = attention_weights(self.img_query_fc(regions), self.txt_key_fc(words),
                                       word_mask)                            # (..., R, L)
    region_to_word = attention_weights(self.txt_query_fc(words), self.img_key_fc(regions))
    words_at_regions = word_to_region @ words                                # Tv (..., R, d)
    regions_at_words = region_to_word @ regions                              # Vt (..., L, d)
    fv = attend(self.weighted_txt_query_fc(words_at_regions),
                self.weighted_txt_key_fc(words_at_regions), words_at_regions)
    ft = attend(self.weighted_img_query_fc(regions_at_words),
                self.weighted_img_key_fc(regions_at_words), regions_at_words, word_mask)
    maps = {"region_attends_words": word_to_region, "word_attends_regions": region_to_word}
    return fv, ft, maps

  def __call__(self, regions, words, word_mask, deterministic: bool = True):
    """Score of each pair: (...)."""
    return self.explain(regions, words, word_mask, deterministic)["score"]

  def explain(self, regions, words, word_mask, deterministic: bool = True) -> dict:
    """The score with what produced it: attention maps, gates and pooling weights."""
    fv, ft, out = self.messages(regions, words, word_mask)
    if self.variant == "cross_attention":
      v = l2_normalize(jnp.mean(fv, axis=-2))
      if self.mean_over_padding:
        t = jnp.mean(ft, axis=-2)
      else:
        m = word_mask[..., None].astype(ft.dtype)
        t = jnp.sum(ft * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0)
      out["score"] = jnp.sum(v * l2_normalize(t), axis=-1)
      return out
    fv, ft = l2_normalize(fv), l2_normalize(ft)
    out["region_gate"] = fusion_gate(regions, fv, self.gate)
    out["word_gate"] = fusion_gate(words, ft, self.gate)
    v, out["region_pooling"] = self.final_reduce_1(
        gated_fusion(self.fc_1, regions, fv, out["region_gate"]), return_weights=True)
    t, out["word_pooling"] = self.final_reduce_2(
        gated_fusion(self.fc_2, words, ft, out["word_gate"]), word_mask, return_weights=True)
    if self.head == "mlp" or self.is_initializing():  # (cosine: fc_out created, never read)
      out["score"] = self.fc_out(v, t, deterministic)
    if self.head == "cosine":
      out["score"] = jnp.sum(v * t, axis=-1)
    return out


class CAMP(nn.Module):
  """Image encoder + caption encoder + cross-modal fusion.

  Methods (use with `model.apply(variables, ..., method=...)`):
    encode_images: (N, R, img_dim) -> (N, R, d)
    encode_captions: tokens (N, T), lengths (N,) -> (N, T', d), mask (N, T') with
      T' = max(T, pad_words_to)
    score_matrix: (Ni, R, d), (Nc, L, d), (Nc, L) -> (Ni, Nc), every pair expanded
    fast_score_matrix: the same scores by the hoisted exact path (no dropout)
    image_features / caption_features / pair_scores: the hoisted path in its three steps
    image_vectors / caption_vectors: independent shortlist embeddings (N, d) / (M, d)
    explain_pair: attention maps, gates and score of one pair
    __call__: images, tokens, lengths -> the (N, N) score matrix of a batch.
  """
  # A score needs the pair-wise fusion (VSE.PAIRWISE is False): what the fast path, the
  # scoring driver and the reranking of a shortlist are for.
  PAIRWISE: ClassVar[bool] = True
  vocab_size: int
  word_dim: int = 300
  embed_dim: int = 1024
  img_dim: int = 2048
  variant: str = "gate_fusion"
  gate: str = "adaptive"            # full model: one of GATES (the module docstring)
  head: str = "mlp"                 # full model: one of HEADS
  # The original pads every caption to 50 word slots; only the stage-1 variant's scores
  # depend on it (see CrossModalFusion.mean_over_padding). None: no padding.
  pad_words_to: int | None = None
  pool_heads: int = 4
  dropout_rate: float = 0.0
  # Compute dtype of the matrix products (bfloat16 or float32); parameters stay float32.
  dtype: Any = jnp.float32

  @property
  def has_gates(self) -> bool:
    """Whether the fusion has gates: `explain_pair` and `pair_scores(with_gates=True)` give
    "region_gate" and "word_gate" (the full model; the training statistics read them)."""
    return self.variant == "gate_fusion"

  def setup(self):
    self.img_enc = ImageEncoder(self.embed_dim, dtype=self.dtype)
    self.txt_enc = CaptionEncoder(self.vocab_size, self.word_dim, self.embed_dim)
    self.fusion = CrossModalFusion(
        self.embed_dim, self.variant, self.gate, self.head, self.pool_heads,
        mean_over_padding=self.variant == "cross_attention" and self.pad_words_to is not None,
        dropout_rate=self.dropout_rate, dtype=self.dtype)

  def encode_images(self, images):
    return self.img_enc(images)

  def encode_captions(self, tokens, lengths):
    if self.pad_words_to is not None and tokens.shape[1] < self.pad_words_to:
      tokens = jnp.pad(tokens, ((0, 0), (0, self.pad_words_to - tokens.shape[1])))
    return self.txt_enc(tokens, lengths)

  def score_matrix(self, img_emb, cap_emb, cap_mask, deterministic: bool = True):
    """Every image against every caption, each pair expanded: (Ni, Nc)."""
    n_img, n_cap = img_emb.shape[0], cap_emb.shape[0]
    regions = jnp.broadcast_to(img_emb[:, None], (n_img, n_cap) + img_emb.shape[1:])
    words = jnp.broadcast_to(cap_emb[None], (n_img,) + cap_emb.shape)
    mask = jnp.broadcast_to(cap_mask[None], (n_img,) + cap_mask.shape)
    return self.fusion(regions, words, mask, deterministic)

  # The hoisted exact path (camp_fast). Stage-1 scores count `pad_words_to` word slots;
  # captions may come trimmed to any width, padded slots are accounted for exactly.
  def _fast_weights(self):
    return camp_fast.rounded_weights(self.fusion.variables["params"], self.dtype)

  def image_features(self, img_emb):
    """Per-image quantities of the fast path: (Ni, R, d) -> dict of (Ni, ...)."""
    return camp_fast.image_features(self._fast_weights(), img_emb, self.variant, self.dtype)

  def caption_features(self, cap_emb, cap_mask):
    """Per-caption quantities of the fast path: (Nc, L, d), (Nc, L) -> dict of (Nc, ...)."""
    return camp_fast.caption_features(self._fast_weights(), cap_emb, cap_mask, self.variant,
                                      self.dtype)

  def pair_scores(self, img_features, cap_features, with_gates: bool = False,
                  pooling: str = "xla"):
    """Every image x caption of the features: (Ni, Nc) float32 [, the gates (full model)].

    `pooling`: "xla", or "pallas" / "interpret" for `pooling_kernel` (forward only).
    """
    pad = self.pad_words_to if self.variant == "cross_attention" else None
    return camp_fast.pair_scores(self._fast_weights(), img_features, cap_features,
                                 self.variant, pad, self.dtype, with_gates, pooling,
                                 gate=self.gate, head=self.head)

  def fast_score_matrix(self, img_emb, cap_emb, cap_mask):
    """`score_matrix` by the hoisted exact path, deterministic: (Ni, Nc) float32."""
    return self.pair_scores(self.image_features(img_emb),
                            self.caption_features(cap_emb, cap_mask))

  def image_vectors(self, img_emb):
    """Shortlist embedding of each image: the mean-pooled regions, (N, R, d) -> (N, d).

    Independent of any caption; training can align it with `caption_vectors` through a
    VSE++ loss term (`shortlist_loss_weight`), so one matrix product ranks a gallery
    before CAMP rescores the top of it.
    """
    return pooled_image(img_emb)

  def caption_vectors(self, cap_emb, cap_mask):
    """Shortlist embedding of each caption: (M, L, d), (M, L) -> (M, d)."""
    return pooled_caption(cap_emb, cap_mask)

  def explain_pair(self, img_emb, cap_emb, cap_mask):
    """Attention maps, gates and score of one pair: (R, d), (L, d), (L,) -> dict."""
    return self.fusion.explain(img_emb, cap_emb, cap_mask)

  def __call__(self, images, tokens, lengths, deterministic: bool = True):
    cap_emb, cap_mask = self.encode_captions(tokens, lengths)
    return self.score_matrix(self.encode_images(images), cap_emb, cap_mask, deterministic)
