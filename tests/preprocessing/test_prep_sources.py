"""Every source format gives the right samples, classes and labels."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from helpers import encode, noise_image, output_bytes, read_samples, write
from PIL import Image

from preprocessing import PreprocessError, build, finalize, sources
from preprocessing.arrays import safe_unpickle
from preprocessing.labels import imagenet_class_map

WNIDS = ["n01440764", "n01443537", "n02119789"]
IMAGENET_1K = sorted(imagenet_class_map().values())  # the label space of every source of ImageNet classes
RELEASE = [imagenet_class_map()[i] for i in range(1, 1001)]  # the npz release's order


def _reference(data: bytes, size: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BOX))


@pytest.fixture(scope="module")
def imagenet_files():
    """{wnid: {filename: jpeg bytes}} — 4 images per class, ImageNet naming."""
    files = {}
    for c, wnid in enumerate(WNIDS):
        files[wnid] = {f"{wnid}_{100 + i}.JPEG": encode(noise_image(60 + 7 * i, 45 + 3 * c, 10 * c + i), "JPEG")
                       for i in range(4)}
    return files


def _check_imagenet(out, files, split="train"):
    manifest, samples = read_samples(out, 16, split)
    assert manifest["classes"] == IMAGENET_1K and manifest["num_samples"] == 12
    assert not manifest["skipped"]
    for s in samples:
        wnid = s["json"]["class"]
        name = s["json"]["source"].rsplit("/", 1)[-1]
        assert s["cls"] == IMAGENET_1K.index(wnid)
        assert s["key"] == name.split(".")[0]
        assert np.array_equal(s["pixels"], _reference(files[wnid][name], 16))
    return manifest, samples


def test_imagenet_train_dir(tmp_path, imagenet_files):
    for wnid, d in imagenet_files.items():
        for name, data in d.items():
            write(tmp_path / "train" / wnid / name, data)
    build(tmp_path / "train", "train", [16], tmp_path / "out", shard_size=5, progress=False)
    manifest, _ = _check_imagenet(tmp_path / "out", imagenet_files)
    assert manifest["source_kind"] == "imagenet-train-dir"
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 2]


def _tar_of_tars(outer_path, files):
    with tarfile.open(outer_path, "w") as outer:
        for wnid, d in files.items():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for name, data in d.items():
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    inner.addfile(ti, io.BytesIO(data))
            ti = tarfile.TarInfo(f"{wnid}.tar")
            ti.size = len(buf.getvalue())
            outer.addfile(ti, io.BytesIO(buf.getvalue()))
    return outer_path


def test_imagenet_train_tar_of_tars(tmp_path, imagenet_files):
    outer_path = _tar_of_tars(tmp_path / "ILSVRC2012_img_train.tar", imagenet_files)
    build(outer_path, "train", [16], tmp_path / "out", shard_size=5, progress=False)
    manifest, samples = _check_imagenet(tmp_path / "out", imagenet_files)
    assert manifest["source_kind"] == "imagenet-train-tar"
    assert samples[0]["json"]["source"].split("/")[0].endswith(".tar")


def test_array_tasks_list_a_tar_once_and_a_changed_tar_again(tmp_path, imagenet_files, monkeypatch):
    """Task 0 lists the tar and saves the listing beside the output; task 1 reads it (listing the
    tar would raise here) and the result equals a one-task build; a changed tar is listed again."""
    outer_path = _tar_of_tars(tmp_path / "ILSVRC2012_img_train.tar", imagenet_files)
    build(outer_path, "train", [16], tmp_path / "one", shard_size=5, progress=False)
    out = tmp_path / "out"
    build(outer_path, "train", [16], out, shard_size=5, num_tasks=2, task_id=0, progress=False)
    assert len(list((out / ".listing").glob("train-*.json.gz"))) == 1

    def no_listing(*a, **k):
        raise AssertionError("the tar was listed again")
    monkeypatch.setattr(sources, "_open_tar", no_listing)
    build(outer_path, "train", [16], out, shard_size=5, num_tasks=2, task_id=1, progress=False)
    finalize(out, "train")
    assert output_bytes(out) == output_bytes(tmp_path / "one")

    changed = dict(imagenet_files)
    changed[WNIDS[0]] = {**imagenet_files[WNIDS[0]], f"{WNIDS[0]}_999.JPEG": encode(noise_image(50, 40, 9), "JPEG")}
    _tar_of_tars(outer_path, changed)
    with pytest.raises(AssertionError, match="listed again"):
        build(outer_path, "train", [16], tmp_path / "other", shard_size=5, progress=False)
    monkeypatch.undo()
    cache = out / ".listing"
    assert len(sources.open_source(outer_path, "train", cache_dir=cache).items) == 13  # listed and saved
    for p in cache.glob("train-*.json.gz"):
        p.write_bytes(b"\x1f\x8b truncated")
    calls, real = [], sources._open_tar
    monkeypatch.setattr(sources, "_open_tar", lambda *a: calls.append(1) or real(*a))
    assert len(sources.open_source(outer_path, "train", cache_dir=cache).items) == 13
    assert calls == [1]  # a corrupt listing is not trusted: the tar is listed again


def _val_files(n=9):
    return {f"ILSVRC2012_val_{i:08d}.JPEG": encode(noise_image(50 + i, 40, 100 + i), "JPEG")
            for i in range(1, n + 1)}


def _check_val(out, files, labels):
    manifest, samples = read_samples(out, 16, "val")
    assert manifest["num_samples"] == len(files)
    for s in samples:
        name = s["json"]["source"].rsplit("/", 1)[-1]
        assert s["json"]["class"] == labels[name.split(".")[0]]
        assert manifest["classes"][s["cls"]] == s["json"]["class"]
        assert np.array_equal(s["pixels"], _reference(files[name], 16))
    return manifest


@pytest.mark.parametrize("as_tar", [False, True])
def test_val_folder_or_tar_with_loc_csv(tmp_path, as_tar):
    files = _val_files()
    labels = {name.split(".")[0]: WNIDS[i % 3] for i, name in enumerate(sorted(files))}
    csv_path = write(tmp_path / "LOC_val_solution.csv", ("ImageId,PredictionString\n" + "".join(
        f"{k},{v} 1 2 30 40 {v} 5 6 7 8\n" for k, v in labels.items())).encode())
    if as_tar:
        src = tmp_path / "ILSVRC2012_img_val.tar"
        with tarfile.open(src, "w") as tf:
            for name, data in files.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    else:
        src = tmp_path / "val"
        for name, data in files.items():
            write(src / name, data)
    build(src, "val", [16], tmp_path / "out", val_labels=csv_path, shard_size=4, progress=False)
    manifest = _check_val(tmp_path / "out", files, labels)
    assert manifest["classes"] == IMAGENET_1K
    assert manifest["source_kind"] == ("imagenet-val-tar" if as_tar else "imagenet-val-dir")


def test_val_with_devkit_ground_truth_and_text_map(tmp_path):
    files = _val_files(6)
    src = tmp_path / "val"
    for name, data in files.items():
        write(src / name, data)
    ids = [3, 1, 2, 2, 1, 3]   # ILSVRC2012 ids, line i = image i
    gt = write(tmp_path / "devkit" / "ILSVRC2012_validation_ground_truth.txt", "".join(f"{i}\n" for i in ids).encode())
    # map_clsloc.txt layout: id order is not wnid order
    cmap = write(tmp_path / "map.txt", b"n02119789 1 kit_fox\nn01440764 2 tench\nn01443537 3 goldfish\n")
    build(src, "val", [16], tmp_path / "out", val_labels=gt, class_map=cmap, progress=False)
    id2wnid = {1: "n02119789", 2: "n01440764", 3: "n01443537"}
    labels = {f"ILSVRC2012_val_{i:08d}": id2wnid[v] for i, v in enumerate(ids, 1)}
    manifest = _check_val(tmp_path / "out", files, labels)
    assert manifest["classes"] == IMAGENET_1K


def test_devkit_meta_mat_found_next_to_ground_truth(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    files = _val_files(3)
    for name, data in files.items():
        write(tmp_path / "val" / name, data)
    gt = write(tmp_path / "data" / "ILSVRC2012_validation_ground_truth.txt", b"1\n2\n1\n")
    synsets = np.zeros(3, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    synsets[0] = (1, "n02119789", 0)
    synsets[1] = (2, "n01440764", 0)
    synsets[2] = (1001, "n00001740", 2)   # an inner node: not a class
    scipy_io.savemat(tmp_path / "data" / "meta.mat", {"synsets": synsets})
    build(tmp_path / "val", "val", [16], tmp_path / "out", val_labels=gt, progress=False)
    manifest, samples = read_samples(tmp_path / "out", 16, "val")
    assert manifest["classes"] == IMAGENET_1K
    assert {s["key"]: s["json"]["class"] for s in samples}["ILSVRC2012_val_00000002"] == "n01440764"


def test_imagefolder_keys_unique_and_shuffled(tmp_path, synthetic_src):
    write(synthetic_src.parent / "dup" / "x" / "a.b.png", encode(noise_image(30, 30, 1), "PNG"))
    write(synthetic_src.parent / "dup" / "y" / "a.b.png", encode(noise_image(30, 30, 2), "PNG"))
    build(synthetic_src.parent / "dup", "train", [16], tmp_path / "dup_out", progress=False)
    _, dup = read_samples(tmp_path / "dup_out", 16, "train")
    assert sorted(s["key"] for s in dup) == ["x_a_b", "y_a_b"]
    build(synthetic_src, "train", [16], tmp_path / "out", shard_size=30, progress=False)
    manifest, samples = read_samples(tmp_path / "out", 16, "train")
    assert manifest["source_kind"] == "imagefolder" and manifest["num_classes"] == 3
    labels = [s["cls"] for s in samples]
    assert labels != sorted(labels)                                   # shuffled across shards
    assert all(len(set(labels[i:i + 30])) == 3 for i in range(0, 90, 30))
    assert len({s["key"] for s in samples}) == 90


def _cifar_batch(path, n, seed, protocol=2):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, n)]
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data,
                     b"filenames": [b"f%d.png" % i for i in range(n)]}, f, protocol=protocol)
    return data, labels


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_batches(tmp_path):
    src = tmp_path / "cifar-10-batches-py"
    src.mkdir()
    with open(src / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}, f, protocol=2)
    train = [_cifar_batch(src / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    test_data, test_labels = _cifar_batch(src / "test_batch", 5, 9, protocol=4)
    build(src, "train", [32, 16], tmp_path / "out", shard_size=7, progress=False)
    manifest, samples = read_samples(tmp_path / "out", 32, "train")
    assert manifest["num_samples"] == 20 and manifest["classes"] == CIFAR_NAMES
    assert manifest["source_kind"] == "cifar10"
    for s in samples:
        fname, row = s["json"]["source"].rstrip("]").split("[")
        data, labels = train[int(fname[-1]) - 1]
        img = data[int(row)].reshape(3, 32, 32).transpose(1, 2, 0)
        assert np.array_equal(s["pixels"], img)                      # taken as is
        assert s["cls"] == labels[int(row)]
    _, small = read_samples(tmp_path / "out", 16, "train")
    ref = Image.fromarray(train[0][0][0].reshape(3, 32, 32).transpose(1, 2, 0)).resize((16, 16), Image.BOX)
    assert np.array_equal(next(s for s in small if s["json"]["source"] == "data_batch_1[0]")["pixels"], np.asarray(ref))
    build(src, "val", [32], tmp_path / "out", progress=False)
    assert read_samples(tmp_path / "out", 32, "val")[0]["num_samples"] == 5


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_cifar_pickle_with_code_is_refused(tmp_path):
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(PreprocessError, match="not allowed"):
        safe_unpickle(p)
    with pytest.raises(PreprocessError, match="refusing"):
        build(tmp_path, "train", [32], tmp_path / "out", progress=False)


@pytest.mark.parametrize("compressed", [False, True])
def test_downsampled_imagenet_npz(tmp_path, compressed):
    rng = np.random.default_rng(3)
    save = np.savez_compressed if compressed else np.savez
    batches = []
    for i in (1, 2):
        data = rng.integers(0, 256, (6, 3 * 8 * 8), dtype=np.uint8)
        labels = rng.integers(1, 4, 6)
        save(tmp_path / f"train_data_batch_{i}.npz", data=data, labels=labels, mean=data.mean(0))
        batches.append((data, labels))
    save(tmp_path / "val_data.npz", data=batches[0][0], labels=batches[0][1], mean=batches[0][0].mean(0))
    build(tmp_path, "train", [8, 16], tmp_path / "out", shard_size=5, progress=False)
    manifest, samples = read_samples(tmp_path / "out", 8, "train")
    assert manifest["num_samples"] == 12 and manifest["source_kind"] == "downsampled-imagenet-npz"
    assert manifest["classes"] == IMAGENET_1K  # labels named by the release's own map, shipped as data
    for s in samples:
        fname, row = s["json"]["source"].rstrip("]").split("[")
        data, labels = batches[int(fname.split("_")[-1].split(".")[0]) - 1]
        img = data[int(row)].reshape(3, 8, 8).transpose(1, 2, 0)       # channel-planar
        assert np.array_equal(s["pixels"], img)
        assert s["json"]["class"] == RELEASE[labels[int(row)] - 1]
        assert manifest["classes"][s["cls"]] == RELEASE[labels[int(row)] - 1]
    # --label-order release keeps the release's own order: label = id - 1
    build(tmp_path, "train", [8], tmp_path / "out_release", shard_size=5, progress=False, label_order="release")
    mr, sr = read_samples(tmp_path / "out_release", 8, "train")
    assert mr["classes"] == RELEASE and mr["params"]["label_order"] == "release"
    assert sorted((s["key"], s["cls"] + 1) for s in sr) == sorted(
        (s["key"], RELEASE.index(s["json"]["class"]) + 1) for s in samples)
    # a class map of one's own names the release's 1-based labels
    cmap = write(tmp_path / "map.txt", b"n02119789 1\nn01440764 2\nn01443537 3\n")
    build(tmp_path / "val_data.npz", "val", [8], tmp_path / "out2", class_map=cmap, progress=False)
    m2, s2 = read_samples(tmp_path / "out2", 8, "val")
    names = ["n02119789", "n01440764", "n01443537"]
    assert m2["classes"] == IMAGENET_1K
    assert all(s["json"]["class"] == names[batches[0][1][int(s["json"]["source"][-2])] - 1] for s in s2)
    assert all(m2["classes"][s["cls"]] == s["json"]["class"] for s in s2)


def test_npz_release_and_the_same_images_as_files_get_the_same_labels(tmp_path):
    """Defect: the npz source labelled classes in the release's own order, so its `cls` differed from the
    same images built from JPEG files (0 of 47 equal). Now every source labels ImageNet classes by sorted
    wnid: same images, same labels, same pixels."""
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 1001, 47)  # 47 images of release classes
    data = rng.integers(0, 256, (47, 3 * 16 * 16), dtype=np.uint8)
    np.savez(tmp_path / "val_data.npz", data=data, labels=ids)
    for i, (row, label) in enumerate(zip(data, ids)):  # the same images as files in class folders
        write(tmp_path / "folder" / RELEASE[label - 1] / f"val_{i:07d}.png",
              encode(Image.fromarray(row.reshape(3, 16, 16).transpose(1, 2, 0)), "PNG"))
    build(tmp_path / "val_data.npz", "val", [16], tmp_path / "from_npz", progress=False)
    build(tmp_path / "folder", "val", [16], tmp_path / "from_files", progress=False)
    (m1, s1), (m2, s2) = read_samples(tmp_path / "from_npz", 16, "val"), read_samples(tmp_path / "from_files", 16, "val")
    assert m1["classes"] == m2["classes"] == IMAGENET_1K
    by_image = {s["pixels"].tobytes(): s["cls"] for s in s2}
    assert len(by_image) == 47
    assert sum(by_image[s["pixels"].tobytes()] == s["cls"] for s in s1) == 47
