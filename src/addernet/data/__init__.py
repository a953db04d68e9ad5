"""Data modules: CIFAR-10, CIFAR-100, MNIST, an ImageNet subset, ImageNet images of CIFAR-10's classes, and
synthetic images that need no files."""

from addernet.data.cifar10 import CIFAR10DataModule
from addernet.data.cifar100 import CIFAR100DataModule
from addernet.data.errors import DataError
from addernet.data.imagenet_cifar10 import ImageNetCIFAR10DataModule
from addernet.data.imagenet_subset import ImageNetSubsetDataModule
from addernet.data.mnist import MNISTDataModule
from addernet.data.synthetic import SyntheticDataModule

__all__ = ["CIFAR100DataModule", "CIFAR10DataModule", "DataError", "ImageNetCIFAR10DataModule",
           "ImageNetSubsetDataModule", "MNISTDataModule",
           "SyntheticDataModule"]
