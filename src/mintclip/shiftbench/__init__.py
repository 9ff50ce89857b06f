"""shiftbench: a synthetic distribution-shift benchmark and a tiny CLIP trained on it, so every method runs end to end anywhere."""
