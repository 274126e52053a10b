"""csr-vlm: Calibrated Self-Rewarding (Zhou et al., NeurIPS 2024) for Hugging Face vision-language models."""

__version__ = "0.1.0"
