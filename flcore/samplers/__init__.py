"""Client samplers: which clients take part in a round."""

from flcore.samplers.base import ClientSampler, UniformSampler
from flcore.samplers.clustered import ClusteredSampler, clustered_distributions

__all__ = ["ClientSampler", "UniformSampler", "ClusteredSampler", "clustered_distributions"]
