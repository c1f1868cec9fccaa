"""Classical CPU restoration operators; importing this package registers them."""

from tools.classical import color, deblock, deblur, dehaze, denoise, derain, lowlight, structure, upscale

__all__ = ["color", "deblock", "deblur", "dehaze", "denoise", "derain", "lowlight", "structure", "upscale"]
