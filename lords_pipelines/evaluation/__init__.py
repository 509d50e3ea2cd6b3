"""Evaluation: perplexity by the library's protocol, zero-shot multiple choice, lm-eval, decode latency."""
