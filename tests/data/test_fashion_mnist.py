"""Fashion-MNIST: where it is looked for, checked downloads, the offline error, the real files."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import shutil
import socket
from pathlib import Path

import pytest
import torch

from smart_transfer.data.idx import read_idx, write_idx
from smart_transfer.errors import ConfigError, DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_README = Path("/usr/share/doc/dataset-fashion-mnist/README.md.gz")

# the module, not the function of the same name that smart_transfer.data exports
fm = importlib.import_module("smart_transfer.data.fashion_mnist")


def _first_pixel(ds: fm.FashionMNIST) -> int:
    return int(ds.images[0, 0, 0])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _closed_port_url() -> str:
    with socket.socket() as s:  # bind then close: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ----------------------------------------------------------------------------- search order


def test_root_comes_first(make_split, isolated: Path, tmp_path: Path, fake_fmnist: Path):
    make_split(isolated / "fashion-mnist", "train", fill=1)
    make_split(tmp_path / "mine", "train", fill=2)
    ds = fm.fashion_mnist("train", root=tmp_path / "mine", download=False)
    assert _first_pixel(ds) == 2
    assert ds.source == tmp_path / "mine"


def test_empty_root_falls_through_to_the_cache(
    make_split, isolated: Path, tmp_path: Path, fake_fmnist: Path
):
    make_split(isolated / "fashion-mnist", "train", fill=1)
    (tmp_path / "empty").mkdir()
    ds = fm.fashion_mnist("train", root=tmp_path / "empty", download=False)
    assert _first_pixel(ds) == 1
    assert ds.source == isolated / "fashion-mnist"


def test_cache_comes_before_system_folders(
    make_split, isolated: Path, tmp_path: Path, fake_fmnist: Path, monkeypatch: pytest.MonkeyPatch
):
    make_split(isolated / "fashion-mnist", "test", fill=1)
    make_split(tmp_path / "system", "test", fill=3)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", [tmp_path / "system"])
    assert _first_pixel(fm.fashion_mnist("test", download=False)) == 1
    shutil.rmtree(isolated / "fashion-mnist")
    ds = fm.fashion_mnist("test", download=False)
    assert _first_pixel(ds) == 3
    assert ds.source == tmp_path / "system"


def test_search_argument_replaces_cache_and_system(
    make_split, isolated: Path, tmp_path: Path, fake_fmnist: Path
):
    make_split(isolated / "fashion-mnist", "test", fill=1)
    make_split(tmp_path / "elsewhere", "test", fill=4)
    ds = fm.fashion_mnist("test", download=False, search=[tmp_path / "elsewhere"])
    assert _first_pixel(ds) == 4


def test_torchvision_layout_and_uncompressed_files(
    make_split, isolated: Path, tmp_path: Path, fake_fmnist: Path
):
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    make_split(raw, "test", fill=5, gz=False)
    ds = fm.fashion_mnist("test", root=tmp_path / "tv", download=False)
    assert _first_pixel(ds) == 5
    assert ds.source == raw


def test_a_folder_with_only_half_a_split_does_not_count(
    make_split, isolated: Path, tmp_path: Path, fake_fmnist: Path
):
    half = tmp_path / "half"
    make_split(half, "test", fill=6)
    (half / "t10k-labels-idx1-ubyte.gz").unlink()
    make_split(isolated / "fashion-mnist", "test", fill=1)
    assert _first_pixel(fm.fashion_mnist("test", root=half, download=False)) == 1


def test_items_targets_and_classes(isolated: Path, fake_fmnist: Path):
    ds = fm.fashion_mnist("train", search=[fake_fmnist], download=False)
    assert len(ds) == fm.SIZES["train"]
    image, label = ds[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    assert isinstance(label, int) and label == int(ds.targets[3])
    assert ds.targets.dtype == torch.int64 and ds.targets.dim() == 1
    assert len(ds.classes) == 10 and ds.classes[ds.targets.max()]
    assert torch.equal(image[0], read_idx(fake_fmnist / "train-images-idx3-ubyte.gz")[3])


def test_wrong_split_name(isolated: Path):
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        fm.fashion_mnist("validation")


def test_files_of_the_wrong_shape_are_rejected(
    make_split, isolated: Path, tmp_path: Path, fake_fmnist: Path
):
    folder = tmp_path / "odd"
    make_split(folder, "test", fill=0)
    write_idx(
        folder / "t10k-images-idx3-ubyte.gz",
        torch.zeros(fm.SIZES["test"], 32, 32, dtype=torch.uint8),
    )
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*replace the file"):
        fm.fashion_mnist("test", root=folder, download=False)


def test_corrupt_cached_file_names_the_file(make_split, isolated: Path, fake_fmnist: Path):
    cached = isolated / "fashion-mnist"
    make_split(cached, "test", fill=0)
    blob = (cached / "t10k-images-idx3-ubyte.gz").read_bytes()
    (cached / "t10k-images-idx3-ubyte.gz").write_bytes(blob[:-50])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        fm.fashion_mnist("test", download=False)


# ----------------------------------------------------------------------------- downloads


def test_download_checks_and_caches(isolated: Path, fake_fmnist: Path, serve):
    url = serve(fake_fmnist)
    ds = fm.fashion_mnist("test", url=url)
    cached = isolated / "fashion-mnist"
    assert ds.source == cached
    assert _leftovers(cached) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name in _leftovers(cached):
        assert (cached / name).read_bytes() == (fake_fmnist / name).read_bytes()
    # the second call reads the cache: a dead server does not matter any more
    again = fm.fashion_mnist("test", url=_closed_port_url())
    assert torch.equal(again.images, ds.images)


def test_download_url_from_environment(
    isolated: Path, fake_fmnist: Path, serve, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(fm.URL_ENV, serve(fake_fmnist).rstrip("/"))  # no trailing slash either
    ds = fm.fashion_mnist("train")
    assert len(ds) == fm.SIZES["train"]


def test_truncated_download_leaves_nothing(
    isolated: Path, fake_fmnist: Path, tmp_path: Path, serve
):
    bad = tmp_path / "bad"
    shutil.copytree(fake_fmnist, bad)
    blob = (bad / "t10k-images-idx3-ubyte.gz").read_bytes()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*nothing was saved"):
        fm.fashion_mnist("test", url=serve(bad))
    assert _leftovers(isolated / "fashion-mnist") == []


def test_altered_download_leaves_nothing(isolated: Path, fake_fmnist: Path, tmp_path: Path, serve):
    bad = tmp_path / "bad"
    shutil.copytree(fake_fmnist, bad)
    # a valid gzip file of slightly different data: only the checksum can tell
    payload = bytearray(gzip.decompress((bad / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    payload[-1] = (payload[-1] + 1) % 10
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*MD5"):
        fm.fashion_mnist("test", url=serve(bad))
    cached = isolated / "fashion-mnist"
    # the images file before it was good and stays; no trace of the bad labels file
    assert _leftovers(cached) == ["t10k-images-idx3-ubyte.gz"]


def test_transfer_cut_short_leaves_nothing(isolated: Path, fake_fmnist: Path, serve):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*nothing was saved"):
        fm.fashion_mnist("test", url=serve(fake_fmnist, cut_short=True))
    assert _leftovers(isolated / "fashion-mnist") == []


# ----------------------------------------------------------------------------- nothing found


def test_offline_error_names_places_apt_and_download(isolated: Path, tmp_path: Path):
    with pytest.raises(DataError) as info:
        fm.fashion_mnist("train", root=tmp_path / "mine", download=False)
    msg = str(info.value)
    assert str(tmp_path / "mine") in msg
    assert str(isolated / "fashion-mnist") in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "download=True" in msg
    assert "train-images-idx3-ubyte" in msg


def test_failed_download_gives_the_same_help(
    isolated: Path, fake_fmnist: Path, serve, tmp_path: Path
):
    for url in (_closed_port_url(), serve(tmp_path)):  # nothing listening; 404 for every file
        with pytest.raises(DataError) as info:
            fm.fashion_mnist("test", url=url)
        msg = str(info.value)
        assert str(isolated / "fashion-mnist") in msg
        assert "sudo apt-get install dataset-fashion-mnist" in msg
        assert url in msg and "failed" in msg
        assert _leftovers(isolated / "fashion-mnist") == []


# ----------------------------------------------------------------------------- the real files

needs_debian = pytest.mark.skipif(
    not all((DEBIAN_DIR / f"{n}.gz").is_file() for n in fm.CHECKSUMS),
    reason="Debian's dataset-fashion-mnist is not installed",
)


@needs_debian
def test_real_files_from_debian(isolated: Path):
    train = fm.fashion_mnist("train", search=[DEBIAN_DIR], download=False)
    test = fm.fashion_mnist("test", search=[DEBIAN_DIR], download=False)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 28, 28)
    assert len(train.classes) == 10
    assert train.targets.unique().tolist() == list(range(10))
    assert torch.equal(torch.bincount(train.targets), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.targets), torch.full((10,), 1000))
    # real images use the whole 0..255 range and are not all alike
    sample = train.images[:1000]
    assert int(sample.max()) == 255 and float(sample.float().std()) > 50


@needs_debian
def test_checksum_table_matches_the_real_files():
    for name, (_, payload_md5) in fm.CHECKSUMS.items():
        data = (DEBIAN_DIR / f"{name}.gz").read_bytes()
        assert hashlib.md5(gzip.decompress(data)).hexdigest() == payload_md5


@pytest.mark.skipif(not DEBIAN_README.is_file(), reason="the dataset's README is not installed")
def test_published_gz_checksums_match_the_datasets_readme():
    # the README lists "| `train-images-idx3-ubyte.gz` | ... | `<md5>`|" per file
    readme = gzip.decompress(DEBIAN_README.read_bytes()).decode()
    for name, (gz_md5, _) in fm.CHECKSUMS.items():
        rows = [line for line in readme.splitlines() if f"`{name}.gz`" in line and "|" in line]
        assert rows and f"`{gz_md5}`" in rows[0]


@needs_debian
def test_download_of_the_real_files_passes_the_real_checksums(
    isolated: Path, tmp_path: Path, serve
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in fm.FILES["test"]:
        shutil.copy(DEBIAN_DIR / f"{name}.gz", mirror)
    ds = fm.fashion_mnist("test", url=serve(mirror))
    assert ds.source == isolated / "fashion-mnist"
    assert len(ds) == 10000
