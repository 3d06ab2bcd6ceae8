"""The flow stage: speech tokens (25 Hz) + prompt → 80-bin mel (50 Hz)."""
