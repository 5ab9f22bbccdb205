"""Softmax alternatives and what goes wrong with softmax: sparsemax, Gumbel-softmax, StableMax, PAU, neural collapse."""
