"""Heatmap losses: the paper's hypersensitive loss, the Newell L2 baseline, CenterNet's focal loss."""

from keras_hourglass.losses.focal import PenaltyReducedFocalLoss
from keras_hourglass.losses.gaussian_l2 import GaussianL2Loss
from keras_hourglass.losses.hypersensitive import HypersensitiveLoss

__all__ = ["GaussianL2Loss", "HypersensitiveLoss", "PenaltyReducedFocalLoss"]
