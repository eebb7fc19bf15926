"""Evaluation: retrieval metrics (`metrics`), evaluating params / runs / bundles and
ensembles of saved score matrices (`evaluator`), shortlist + rerank recall (`shortlist`).

  python -m camp_jax.evaluate --ensemble A.npy B.npy [--folds 5]
"""
from camp_jax.evaluate.evaluator import (beside_run, encode_split, ensemble, evaluate_params,
                                         evaluate_run, metrics_of, read_metrics, save_scores,
                                         scalar_metrics, write_metrics)
from camp_jax.evaluate.metrics import (KEYS, fold_metrics, format_comparison, format_table,
                                       ground_truth_ranks, image_to_text_ranks, recall_metrics,
                                       text_to_image_ranks)

__all__ = ["KEYS", "beside_run", "encode_split", "ensemble", "evaluate_params", "evaluate_run",
           "fold_metrics", "format_comparison", "format_table", "ground_truth_ranks",
           "image_to_text_ranks", "metrics_of", "read_metrics", "recall_metrics", "save_scores",
           "scalar_metrics", "text_to_image_ranks", "write_metrics"]
