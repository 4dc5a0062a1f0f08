"""Strategies, one module each; ``config.strategies = ("name",)`` finds ``baselines/name.py``."""
