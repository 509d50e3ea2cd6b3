"""lords: Low-Rank Decomposed Scaling (LoRDS) for LLM quantization and adaptation.

Importable with torch alone.
"""
__version__ = "0.1.0"
