"""Knowledge distillation: losses that read a teacher's outputs (an experiment's ``teacher``)."""
