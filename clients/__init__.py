"""The flsuite Flower ClientApp (a site's side)."""
