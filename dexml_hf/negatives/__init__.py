"""Negatives strategies of the DEXML trainer: all labels per step, a label-embedding cache, hard-negative mining,
and a batch sampler that keeps a sampled positive label from repeating inside a batch."""

from dexml_hf.negatives.all_labels import AllLabelsLoss, all_label_loss

__all__ = ["AllLabelsLoss", "all_label_loss"]
