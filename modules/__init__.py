"""MaskTFX modules."""
