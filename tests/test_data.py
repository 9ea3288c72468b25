"""Data loaders: CIFAR and Tiny-ImageNet from folders the tests write, offline digits and MNIST-1D,
and the messages for missing or malformed folders."""

from __future__ import annotations

import pickle
import random
import socket

import numpy as np
import pytest
import torch

from recede import data

pytest.importorskip("torchvision")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _pickle(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def write_cifar10(root, per_batch: int = 2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", {"data": _images(per_batch, i), "labels": [i % 10] * per_batch})
    test = _images(3, 0)
    _pickle(folder / "test_batch", {"data": test, "labels": [0, 1, 2]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return test


def write_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "train", {"data": _images(4, 1), "fine_labels": [0, 5, 99, 5], "coarse_labels": [0] * 4})
    _pickle(folder / "test", {"data": _images(2, 2), "fine_labels": [1, 2], "coarse_labels": [0] * 2})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})


def test_cifar10_reads_a_pickle_folder_with_normalisation(tmp_path, no_network):
    test_images = write_cifar10(tmp_path)
    task = data.load("cifar10", root=str(tmp_path))
    assert (len(task.train), len(task.test)) == (10, 3)
    assert task.input_shape == (3, 32, 32) and task.output_dim == 10
    x, y = task.test[1]
    assert y == 1 and x.shape == (3, 32, 32)
    raw = torch.tensor(test_images[1].reshape(3, 32, 32), dtype=torch.float32) / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in data.images.NORMALISATION["cifar10"])
    torch.testing.assert_close(x, (raw - mean) / std)
    assert [task.train[i][1] for i in range(0, 10, 2)] == [1, 2, 3, 4, 5]


def test_cifar_paper_b_resize_and_train_size(tmp_path):
    write_cifar10(tmp_path)
    task = data.load("cifar10", root=str(tmp_path), size=224, normalize="imagenet", train_size=4)
    assert len(task.train) == 4 and task.input_shape == (3, 224, 224)
    assert task.train[0][0].shape == (3, 224, 224)
    with pytest.raises(ValueError, match="normalize must be"):
        data.load("cifar10", root=str(tmp_path), normalize="zca")


def test_cifar100_fine_labels(tmp_path, no_network):
    write_cifar100(tmp_path)
    task = data.load("cifar100", root=str(tmp_path))
    assert task.output_dim == 100 and [task.train[i][1] for i in range(4)] == [0, 5, 99, 5]


def test_missing_cifar_folder_names_what_was_expected_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*\['train', 'test', 'meta'\]"):
        data.load("cifar100", root=str(tmp_path))
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: \['data_batch_3'\]"):
        data.load("cifar10", root=str(tmp_path))


def test_malformed_cifar_batch_is_a_value_error(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not in the CIFAR python-pickle format"):
        data.load("cifar10", root=str(tmp_path))


def write_tiny_imagenet(root, wnids=("n01", "n02")):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{wnid}_{i}.JPEG")
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(reversed(wnids)):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            folder / "val" / "images" / f"val_{i}.JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_imagenet_reads_train_and_annotated_val(tmp_path, no_network):
    write_tiny_imagenet(tmp_path)
    task = data.load("tiny-imagenet", root=str(tmp_path), size=32)
    assert (len(task.train), len(task.test), task.output_dim) == (4, 2, 2)
    assert task.input_shape == (3, 32, 32) and task.train[0][0].shape == (3, 32, 32)
    assert [task.test[i][1] for i in range(2)] == [1, 0]  # val_0 is n02, val_1 is n01


def test_tiny_imagenet_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tiny-imagenet-200/train/<wnid>/images"):
        data.load("tiny-imagenet", root=str(tmp_path))
    folder = write_tiny_imagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="line 1 is not 'file<TAB>wnid"):
        data.load("tiny-imagenet", root=str(tmp_path))


def test_digits_offline_cifar_shaped(no_network):
    task = data.load("digits", size=32, channels=3)
    assert task.input_shape == (3, 32, 32) and task.train[0][0].shape == (3, 32, 32)
    assert len(task.train) + len(task.test) == 1797


def test_mnist1d_generated_offline_and_deterministic(no_network):
    np_state, py_state = np.random.get_state(), random.getstate()
    task = data.load("mnist1d", num_samples=200)
    assert (len(task.train), len(task.test), task.input_shape, task.output_dim) == (160, 40, (40,), 10)
    assert task.train.tensors[1].unique().numel() == 10
    assert abs(float(task.train.tensors[0].std()) - 1) < 0.1  # the package standardises
    np.testing.assert_array_equal(np.random.get_state()[1], np_state[1])  # global RNGs untouched
    assert random.getstate() == py_state
    again = data.load("mnist1d", num_samples=200)
    assert torch.equal(again.train.tensors[0], task.train.tensors[0])


def test_spirals_are_balanced_deterministic_and_not_linearly_separable():
    task = data.load("spirals", n=2000, n_test=500, seed=3)
    x, y = task.train.tensors
    assert task.kind == "classification" and task.input_shape == (2,) and task.output_dim == 2
    assert x.shape == (2000, 2) and abs(float(y.float().mean()) - 0.5) < 0.05
    assert torch.equal(x, data.load("spirals", n=2000, n_test=500, seed=3).train.tensors[0])
    # the best linear separator (least squares on ±1 targets) stays near chance
    features = torch.cat([x, torch.ones(len(x), 1)], 1)
    w = torch.linalg.lstsq(features, (2 * y - 1).float()[:, None]).solution
    assert float(((features @ w).squeeze(1) > 0).eq(y.bool()).float().mean()) < 0.7
    with pytest.raises(ValueError, match="arms"):
        data.load("spirals", arms=1)
