"""k-means with argmin assignments: scikit-learn's API, gradient descent, torch.distributed.

>>> import torch
>>> import gradwise as gw
>>> km = gw.cluster.KMeans(3, random_state=0).fit(torch.randn(300, 2))
>>> km.cluster_centers_.shape
torch.Size([3, 2])
"""

from gradwise.cluster._distributed import PeerTimeoutError
from gradwise.cluster._kmeans import KMeans, SoftKMeans, kmeans_loss, soft_kmeans_assign

__all__ = ["KMeans", "PeerTimeoutError", "SoftKMeans", "kmeans_loss", "soft_kmeans_assign"]
