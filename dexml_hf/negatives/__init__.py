"""Negatives strategies of the DEXML trainer: all labels per step, a label-embedding cache, hard-negative mining,
and a batch sampler that keeps a sampled positive label from repeating inside a batch."""

from dexml_hf.negatives.all_labels import AllLabelsLoss

__all__ = ["AllLabelsLoss"]
