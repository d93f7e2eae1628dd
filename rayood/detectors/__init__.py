"""OOD detectors: one module per family, each scoring from shared backbone features (higher = more OOD)."""
