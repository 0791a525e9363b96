"""Validated configuration: hardware profiles, model specs and presets, build specs."""
