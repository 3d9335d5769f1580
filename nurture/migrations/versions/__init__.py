"""Migration steps, oldest first (small steps: add, backfill, then remove)."""
