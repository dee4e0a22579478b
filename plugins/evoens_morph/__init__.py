"""evoens_morph: function-preserving mutations (R2R, Net2Net) and architecture neuroevolution."""
