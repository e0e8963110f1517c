"""MaskTFX components."""
