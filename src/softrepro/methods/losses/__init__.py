"""Losses, output layers and models that classification-loss papers bring (label noise, calibration)."""
