"""Datasets with the reference label spaces, robust image decoding, and test-time views."""
