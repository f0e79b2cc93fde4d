"""Datasets as on-device uint8 tensors, their loaders, and batch augmentation."""

from sslpoison.data.imageset import ImageSet
from sslpoison.data.registry import (
    DATASETS,
    DatasetDownloadError,
    DatasetNotFound,
    dataset_status,
    fetch,
    load_dataset,
)

__all__ = [
    "DATASETS",
    "DatasetDownloadError",
    "DatasetNotFound",
    "ImageSet",
    "dataset_status",
    "fetch",
    "load_dataset",
]
