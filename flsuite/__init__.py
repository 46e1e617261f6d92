"""flsuite: federated, privacy-preserving training with Flower, Opacus and an auditable registry."""

__version__ = "0.1.0"
