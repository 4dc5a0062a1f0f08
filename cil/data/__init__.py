"""Data: named sources (``sources``), class-incremental streams (``stream``), augmentation."""
