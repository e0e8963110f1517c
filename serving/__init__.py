"""MaskTFX serving."""
