"""Datasets on disk -> ImageSource -> class-incremental Benchmark of torch datasets."""

from .benchmark import Benchmark, SourceDataset, build_benchmark
from .cifar import load_cifar10, load_cifar100
from .cub import load_cub200
from .digits import load_digits
from .errors import DatasetFileError, DatasetNotFoundError
from .five_datasets import load_five_datasets, part_order
from .imagenet_r import load_imagenet_r
from .mnist import load_fashion_mnist, load_mnist
from .notmnist import load_notmnist
from .source import ArraySource, ConcatSource, FileSource, ImageSource, SourcePair
from .svhn import load_svhn
from .transforms import TRANSFORM_KINDS, build_transform

__all__ = [
    "TRANSFORM_KINDS",
    "ArraySource",
    "Benchmark",
    "ConcatSource",
    "DatasetFileError",
    "DatasetNotFoundError",
    "FileSource",
    "ImageSource",
    "SourceDataset",
    "SourcePair",
    "build_benchmark",
    "build_transform",
    "load_cifar10",
    "load_cifar100",
    "load_cub200",
    "load_digits",
    "load_fashion_mnist",
    "load_five_datasets",
    "load_imagenet_r",
    "load_mnist",
    "load_notmnist",
    "load_svhn",
    "part_order",
]
