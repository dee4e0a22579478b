"""evoens_binary: binarized networks and their gradient estimators (STE family, NES, CDG)."""
