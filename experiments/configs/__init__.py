"""Experiment configs: `get_config(variant)` files for ml_collections config flags."""
