"""Compile-only analysis for TPU slices and GPUs: python -m camp_jax.aot (see __main__)."""
