"""Recall metrics on hand-made score matrices."""
import json

import numpy as np
import pytest

from camp_jax import evaluate


def test_perfect_and_reversed_scores():
  n, k = 4, 5
  truth = np.repeat(np.eye(n), k, axis=1)                # caption j belongs to image j // 5
  m = evaluate.recall_metrics(truth)
  assert m["i2t_r1"] == m["t2i_r1"] == 100.0 and m["rsum"] == 600.0
  assert m["i2t_medr"] == m["t2i_medr"] == 1.0 and (m["n_images"], m["n_captions"]) == (4, 20)
  worst = evaluate.recall_metrics(-truth)
  assert worst["i2t_r1"] == 0.0 and worst["i2t_meanr"] == 16.0   # behind 15 wrong captions
  assert worst["t2i_r1"] == 0.0 and worst["t2i_meanr"] == 4.0    # behind 3 wrong images


def test_best_of_five_and_exact_ranks():
  scores = np.zeros((2, 10))
  scores[0] = [0.1, 0.9, 0.2, 0.2, 0.2, 0.95, 0.3, 0.3, 0.3, 0.3]  # best own caption rank 2
  scores[1] = [0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.8]   # own caption 9 is first
  np.testing.assert_array_equal(evaluate.image_to_text_ranks(scores), [1, 0])
  # Caption 1: image 0 scores 0.9 > 0.5 -> rank 0; caption 5: image 0 (0.95) > image 1 (0.1).
  np.testing.assert_array_equal(evaluate.text_to_image_ranks(scores),
                                [1, 0, 1, 1, 1, 1, 1, 1, 1, 0])
  m = evaluate.recall_metrics(scores)
  assert m["i2t_r1"] == 50.0 and m["i2t_r5"] == 100.0
  assert m["t2i_r1"] == 20.0 and m["t2i_medr"] == 2.0


def test_ties_rank_the_ground_truth_last():
  m = evaluate.recall_metrics(np.ones((3, 15)))
  assert m["i2t_r1"] == m["t2i_r1"] == 0.0
  assert m["i2t_meanr"] == 11.0 and m["t2i_meanr"] == 3.0  # behind all 10 / 2 wrong items


def test_coco_five_folds_average_independent_blocks():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(10, 50))
  folds = evaluate.fold_metrics(scores, folds=5)
  per_fold = [evaluate.recall_metrics(scores[2 * f:2 * f + 2, 10 * f:10 * f + 10])
              for f in range(5)]
  for key in evaluate.KEYS:
    assert folds[key] == pytest.approx(np.mean([p[key] for p in per_fold]))
  assert folds["n_images"] == 2 and folds["folds"] == 5
  with pytest.raises(ValueError, match="folds"):
    evaluate.fold_metrics(scores, folds=3)


def test_bad_shapes_and_values_are_refused():
  with pytest.raises(ValueError, match="expected"):
    evaluate.recall_metrics(np.zeros((3, 14)))
  with pytest.raises(ValueError, match="NaN"):
    evaluate.recall_metrics(np.full((1, 5), np.nan))


def test_metrics_json_and_table(tmp_path):
  m = evaluate.recall_metrics(np.repeat(np.eye(3), 5, axis=1))
  path = evaluate.write_metrics(tmp_path, "test", m)
  assert path == tmp_path / "eval" / "test.json" and '"i2t_r1": 100.0' in path.read_text()
  assert "rsum 600.0" in evaluate.format_table(m)


def test_coco_5k_and_1k_come_from_one_matrix_with_their_own_rsum():
  # 10 images in 5 folds of 2: the whole-matrix ranks see the other folds' captions, the
  # fold ranks do not, so the two differ and each rsum is the sum of its own six recalls.
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(10, 50))
  m = evaluate.metrics_of(scores, folds=5)
  whole, folds = evaluate.recall_metrics(scores), evaluate.fold_metrics(scores, folds=5)
  assert {k: m[k] for k in evaluate.KEYS} == {k: whole[k] for k in evaluate.KEYS}
  assert m["folds"] == folds and m["folds"]["rsum"] != m["rsum"]
  for result in (m, m["folds"]):
    recalls = [result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert result["rsum"] == pytest.approx(sum(recalls))
  assert "mean of 5 folds of 2 images" in evaluate.format_table(m)


def test_ensemble_command_averages_saved_matrices(tmp_path, capsys):
  from camp_jax import cli
  from camp_jax.evaluate import __main__ as ensemble_cli
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(4, 20)), rng.normal(size=(4, 20))
  paths = [evaluate.save_scores(tmp_path / name, m) for name, m in (("a.npy", a), ("b.npy", b))]
  assert cli.call(ensemble_cli.main, ["--ensemble", *map(str, paths), "--json"]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  expected = evaluate.recall_metrics((a.astype(np.float32) + b.astype(np.float32)) / 2)
  assert {k: printed[k] for k in evaluate.KEYS} == pytest.approx(
      {k: expected[k] for k in evaluate.KEYS})
  evaluate.save_scores(tmp_path / "c.npy", rng.normal(size=(4, 25)))
  assert cli.call(ensemble_cli.main, ["--ensemble", str(paths[0]), str(tmp_path / "c.npy")]) == 1
  assert "differs from" in capsys.readouterr().err
