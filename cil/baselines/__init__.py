"""Strategies, one module each; ``config.strategies = ("name",)`` finds ``cil/baselines/name.py``."""
