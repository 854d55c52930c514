"""Evaluation: the held-out pairs and their exclusions, full-corpus metrics by
popularity slice, embedding whole tables, plots.
"""
