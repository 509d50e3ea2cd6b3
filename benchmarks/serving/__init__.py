"""Serving speed of fine-tuned models (decode and prefill)."""
