"""Datasets with the references ' label spaces, robust decoding, and test-time views."""
