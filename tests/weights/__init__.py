"""Parity and import/export tests for the weight converters (torch references)."""
