"""Post-hoc OOD and confidence scores (registered in SCORES; see softrepro.ood)."""
