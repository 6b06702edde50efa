"""needle.data: datasets, transforms and the DataLoader (API contract section 8).

Nothing here imports needle.autograd at module import time; Tensor is imported
lazily where batches are built.
"""
from .dataset import Dataset, NDArrayDataset
from .dataloader import DataLoader
from .sampler import DistributedSampler
from .transforms import Transform, RandomFlipHorizontal, RandomCrop
from .mnist import MNISTDataset, parse_mnist
from .cifar10 import CIFAR10Dataset
from .ptb import Dictionary, Corpus, batchify, get_batch
from .locate import cifar10_files, data_search_paths, find_data_root, mnist_files, ptb_files

__all__ = [
    "Dataset",
    "NDArrayDataset",
    "DataLoader",
    "DistributedSampler",
    "Transform",
    "RandomFlipHorizontal",
    "RandomCrop",
    "MNISTDataset",
    "CIFAR10Dataset",
    "Dictionary",
    "Corpus",
    "batchify",
    "get_batch",
    "parse_mnist",
    "find_data_root",
    "data_search_paths",
    "cifar10_files",
    "mnist_files",
    "ptb_files",
]
