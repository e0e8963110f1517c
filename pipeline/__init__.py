"""MaskTFX pipeline."""
