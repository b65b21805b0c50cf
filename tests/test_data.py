"""Datasets: the 2-D toys, Gaussian mixtures, the bundled digits, and the local-file loaders (with small files
written here, and clear errors when files are missing)."""

import gzip
import math
import pickle

import numpy as np
import pytest
import torch

from sde_diffusion import data
from sde_diffusion.data import ArrayDataset


@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toys_are_seeded_two_dimensional_and_unit_scale(name):
    a, b, c = data.get(name, n=4000, seed=0), data.get(name, n=4000, seed=0), data.get(name, n=4000, seed=1)
    assert a.shape == (2,) and a.data.dtype == torch.float32 and torch.isfinite(a.data).all()
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)
    std = a.data.std(0)
    assert ((std > 0.5) & (std < 2.0)).all(), std
    assert a.data.abs().max() < 4
    fresh = a.sample(100, torch.Generator().manual_seed(5))
    assert fresh.shape == (100, 2)


def test_checkerboard_fills_the_dark_squares_uniformly():
    x = data.checkerboard(16000, torch.Generator().manual_seed(0))
    cell = x.floor().long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = torch.unique(cell[:, 0] * 10 + cell[:, 1], return_counts=True)[1]
    assert len(counts) == 8
    assert (counts - 2000).abs().max() < 5 * math.sqrt(2000)


def test_rings_lie_on_their_radii():
    x = data.concentric_rings(4000, torch.Generator().manual_seed(0), noise=0.0)
    r = x.norm(dim=1)
    assert torch.allclose(r, (r * 2).round() / 2, atol=1e-5)
    assert set((r * 2).round().int().tolist()) == {1, 2, 3, 4}


def test_eight_gaussians_is_an_exact_mixture():
    ds = data.get("eight_gaussians", n=20000)
    mixture = ds.mixture
    assert mixture.n_components == 8
    mean, cov = mixture.mean(), mixture.covariance()
    x = ds.data.double()
    n = len(x)
    assert (x.mean(0) - mean).abs().max() < 5 * math.sqrt(cov.diagonal().max() / n)
    # its exact score plugs into sampling as a ScoreModel
    import sde_diffusion as sd

    model = mixture.score_model(sd.VPSDE())
    assert model.score(x[:4], 0.5).shape == (4, 2)


def test_random_gaussian_mixture_dataset():
    ds = data.get("gaussian_mixture", dim=3, n_components=2, n=1000, seed=4)
    assert ds.shape == (3,) and ds.mixture.dim == 3 and len(ds) == 1000


def test_registry_names_and_errors():
    assert {"checkerboard", "swiss_roll", "two_moons", "rings", "pinwheel", "eight_gaussians", "digits", "mnist", "cifar10", "image_folder", "gaussian_mixture"} <= set(data.names())
    with pytest.raises(ValueError, match="checkerboard"):
        data.get("checkerbord")
    with pytest.raises(ValueError, match="no option"):
        data.get("digits", root="/tmp")


def test_digits_split_is_stratified_disjoint_and_in_range():
    train, test, everything = data.get("digits", split="train"), data.get("digits", split="test"), data.get("digits", split="all")
    assert len(train) + len(test) == len(everything) == 1797
    assert train.shape == (1, 8, 8) and train.num_classes == 10
    assert train.data.min() == -1 and train.data.max() == 1
    # the two splits partition the whole set (compared as multisets of image+label rows)
    rows = lambda ds: torch.cat([ds.data.reshape(len(ds), -1), ds.labels[:, None].float()], 1)  # noqa: E731
    combined = torch.cat([rows(train), rows(test)])
    assert torch.equal(combined[np.lexsort(combined.numpy().T[::-1])], rows(everything)[np.lexsort(rows(everything).numpy().T[::-1])])
    share = torch.bincount(test.labels, minlength=10) / len(test)
    assert ((share - 0.1).abs() < 0.02).all()
    assert torch.equal(data.get("digits", split="test").data, test.data)  # deterministic


def test_uint8_images_are_served_in_minus_one_one():
    ds = ArrayDataset(torch.tensor([[[[0, 255]]], [[[128, 64]]]], dtype=torch.uint8), torch.tensor([0, 1]))
    x, y = ds.batch(torch.tensor([0, 1]))
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1 and torch.equal(y, torch.tensor([0, 1]))
    assert ds.num_classes == 2


def write_idx(path, array, gz=False):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_the_torchvision_layout(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), np.array([3, 1, 4, 1, 5])
    suffix = ".gz" if gz else ""
    write_idx(raw / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(raw / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    ds = data.get("mnist", root=str(tmp_path), train=True)
    assert ds.shape == (1, 28, 28) and torch.equal(ds.labels, torch.tensor([3, 1, 4, 1, 5]))
    assert torch.equal(ds.data[:, 0], torch.as_tensor(images, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.get("mnist", root=str(tmp_path), train=False)


def test_mnist_missing_root_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        data.mnist(tmp_path / "nowhere")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((4, 28, 28)))
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.mnist(tmp_path)


def test_cifar10_reads_the_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), "labels": [1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    train, test = data.cifar10(tmp_path, train=True), data.cifar10(tmp_path, train=False)
    assert len(train) == 15 and len(test) == 3 and train.shape == (3, 32, 32)
    x, _ = train.batch(torch.arange(15))
    assert x.min() >= -1 and x.max() <= 1
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.cifar10(tmp_path)


def test_image_folder_with_and_without_classes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "labelled" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)).save(tmp_path / "labelled" / cls / f"{i}.png")
    ds = data.get("image_folder", root=str(tmp_path / "labelled"), image_size=8, channels=3)
    assert ds.shape == (3, 8, 8) and ds.num_classes == 2 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    gray = data.image_folder(tmp_path / "labelled", image_size=4, channels=1)
    assert gray.shape == (1, 4, 4)

    (tmp_path / "flat").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (6, 6)).astype(np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    flat = data.image_folder(tmp_path / "flat", channels=1)
    assert flat.labels is None and flat.shape == (1, 6, 6)
    Image.fromarray(rng.integers(0, 256, (7, 6)).astype(np.uint8)).save(tmp_path / "flat" / "odd.png")
    with pytest.raises(ValueError, match="image_size"):
        data.image_folder(tmp_path / "flat", channels=1)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        data.image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        data.image_folder(tmp_path / "missing_dir")
