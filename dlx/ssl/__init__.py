"""Self-supervised objectives: SimSiam (Chen & He 2021) and SimCLR (Chen et al. 2020) train the model named by the
`model` group as an encoder on two augmented views of each sample, with no labels; `objective=supervised` (the
default) trains on labels as before. The labels serve only to measure the representation (dlx.ssl.represent):
k-nearest-neighbour accuracy each epoch, a linear probe at the end.
"""

from dlx.ssl.methods import SimCLR, SimSiam, nt_xent, simsiam_loss
from dlx.ssl.objective import METHODS, SelfSupervised, create_objective
from dlx.ssl.represent import Representation, knn_accuracy, linear_probe, output_std
from dlx.ssl.views import TwoViews

__all__ = ["METHODS", "Representation", "SelfSupervised", "SimCLR", "SimSiam", "TwoViews", "create_objective",
           "knn_accuracy", "linear_probe", "nt_xent", "output_std", "simsiam_loss"]
