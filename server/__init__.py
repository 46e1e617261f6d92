"""The flsuite Flower ServerApp (the coordinator's side)."""
