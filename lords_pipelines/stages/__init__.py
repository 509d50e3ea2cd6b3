"""Stages: the Hydra + Lightning entry points (ptq, ptq_refine, qat, peft, eval) and what only they use."""
