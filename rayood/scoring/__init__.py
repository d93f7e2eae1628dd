"""How scoring runs, below both fitting and screening: the per-batch scorer, the map_batches actor and the
resources its pool is placed with."""
