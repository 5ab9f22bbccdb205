"""Attention normalisation: a small pre-LN decoder (and vision encoder) whose attention weights come
from a registry of normalisations (softmax and what papers propose instead), the language-model task
that evaluates it at several context lengths, and the closed-form checks some papers make."""
