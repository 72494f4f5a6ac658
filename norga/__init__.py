"""norga: prompt-based continual learning on Vision Transformers (NoRGa, HiDe-Prompt)."""

__version__ = "0.1.0"
