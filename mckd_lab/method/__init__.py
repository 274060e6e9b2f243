"""The method: importance weights, mean filling, pairwise modality-weighted KD, the meta step, strategies."""
