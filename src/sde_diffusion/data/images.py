"""Image datasets from local files; nothing is ever downloaded.

`mnist` and `cifar10` read the files torchvision's `MNIST(root)` and `CIFAR10(root)` keep on disk
(`root/MNIST/raw/*-idx?-ubyte[.gz]` and `root/cifar-10-batches-py/*`), so a root prepared for torchvision works
here unchanged, without torchvision installed. `image_folder` reads PNG/JPEG files, one subfolder per class
(torchvision's `ImageFolder` layout) or all in one folder (unlabelled). Each returns an `ArrayDataset` of
uint8 pixels, served as floats in [-1, 1]. A missing file raises `FileNotFoundError` naming the path.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _require(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} is missing. {hint}")
    return path


def _require_root(root: str | Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: the data root {root} does not exist or is not a directory")
    return root


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally gzipped) as a uint8 array: magic 0x0000080N, N big-endian sizes."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} bytes of data")
    return data.reshape(shape)


def mnist(root: str | Path, train: bool = True) -> ArrayDataset:
    """MNIST (1 x 28 x 28, labels 0-9) from `root/MNIST/raw`, the layout of torchvision's `MNIST(root)`."""
    raw_dir = _require_root(root, "MNIST") / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    hint = "Place the MNIST IDX files there (e.g. from torchvision.datasets.MNIST(root, download=True) on a machine with internet)."
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        path = raw_dir / f"{prefix}-{kind}"
        gzipped = raw_dir / f"{prefix}-{kind}.gz"
        arrays.append(read_idx(_require(gzipped if gzipped.exists() and not path.exists() else path, "MNIST file", hint)))
    images, labels = arrays
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"MNIST files in {raw_dir} disagree: images {images.shape}, labels {labels.shape}")
    return ArrayDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), 10, name=f"mnist-{'train' if train else 'test'}")


def cifar10(root: str | Path, train: bool = True) -> ArrayDataset:
    """CIFAR-10 (3 x 32 x 32, labels 0-9) from `root/cifar-10-batches-py`, the layout of torchvision's `CIFAR10(root)`."""
    folder = _require_root(root, "CIFAR-10") / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    hint = "Extract cifar-10-python.tar.gz there (torchvision.datasets.CIFAR10(root, download=True) does this)."
    images, labels = [], []
    for name in names:
        with open(_require(folder / name, "CIFAR-10 batch", hint), "rb") as f:
            batch = pickle.load(f, encoding="latin1")  # the format the dataset ships in
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return ArrayDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), 10, name=f"cifar10-{'train' if train else 'test'}")


def image_folder(root: str | Path, image_size: int | None = None, channels: int = 3) -> ArrayDataset:
    """Every image under `root`, as uint8 `(channels, image_size, image_size)`.

    With subfolders, each is a class (sorted names -> labels 0, 1, ...) and only their images are read;
    without, the images in `root` are unlabelled. Images are converted to grayscale (channels=1) or RGB (3)
    and resized with bicubic filtering to `image_size` if given; otherwise all must share one size.
    """
    from PIL import Image

    root = _require_root(root, "image folder")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    folders = [(root / c, i) for i, c in enumerate(classes)] if classes else [(root, None)]
    files = [(f, label) for folder, label in folders for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}" + (f" or its class folders {classes}" if classes else ""))
    images: list[np.ndarray] = []
    for path, _ in files:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image_size is not None:
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
        array = array[None] if channels == 1 else array.transpose(2, 0, 1)
        if images and array.shape != images[0].shape:
            raise ValueError(f"{path} is {array.shape[1:]} but {files[0][0]} is {images[0].shape[1:]}; pass image_size= to resize")
        images.append(array)
    labels = torch.tensor([label for _, label in files]) if classes else None
    return ArrayDataset(torch.from_numpy(np.stack(images)), labels, len(classes) or None, name=f"folder:{root.name}")
