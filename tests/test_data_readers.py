"""Dataset readers on fixtures written in the real on-disk formats (issue 7, Datasets)."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import data
from keras_mtl.data import augment, testing


def as_list(ds):
    return [tf.nest.map_structure(lambda t: t.numpy(), e) for e in ds]


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nyuv2"))
    return root, testing.write_nyuv2(root, num_train=8, num_val=3)


# ------------------------------------------------------------------- NYUv2


def test_nyuv2_reads_the_written_arrays(nyu):
    root, written = nyu
    examples = as_list(data.nyuv2(root, split="train", batch_size=None, shuffle=False, augment=False))
    assert len(examples) == 8
    for i, (image, labels) in enumerate(examples):
        assert image.dtype == np.float32 and image.shape == (12, 16, 3)
        np.testing.assert_array_equal(image, written["train"]["image"][i])
        assert labels["seg"].dtype == np.int32 and labels["seg"].shape == (12, 16)
        np.testing.assert_array_equal(labels["seg"], written["train"]["label"][i].astype(int))
        assert set(np.unique(labels["seg"])) <= set(range(-1, 13))
        np.testing.assert_array_equal(labels["depth"], written["train"]["depth"][i])
        np.testing.assert_array_equal(labels["normal"], written["train"]["normal"][i])
    assert len(as_list(data.nyuv2(root, split="val", batch_size=2))) == 2  # 3 examples -> 2 batches


def test_nyuv2_roaming_split_is_13_binary_masks_plus_depth_and_normals(nyu):
    root, written = nyu
    ds = data.nyuv2(root, split="val", tasks="roaming", batch_size=None, augment=False)
    image, labels = next(iter(ds))
    assert list(labels) == list(data.NYUV2_ROAMING_TASKS) and len(labels) == 15
    label = written["val"]["label"][0]
    for c, name in enumerate(data.NYUV2_CLASSES):
        mask = labels[f"seg_{name}"].numpy()
        assert mask.shape == (12, 16, 1)
        np.testing.assert_array_equal(mask[..., 0], (label == c).astype("float32"))
    # Every labelled pixel is in exactly one mask; unlabelled ones in none.
    total = sum(labels[f"seg_{n}"].numpy()[..., 0] for n in data.NYUV2_CLASSES)
    np.testing.assert_array_equal(total, (label >= 0).astype("float32"))


def test_nyuv2_shuffle_is_seeded_and_keeps_the_examples(nyu):
    root, written = nyu

    def order(seed):
        ds = data.nyuv2(root, tasks=("depth",), batch_size=None, seed=seed, augment=False)
        depths = [labels["depth"] for _, labels in as_list(ds)]
        return [next(i for i, d in enumerate(written["train"]["depth"]) if np.array_equal(d, x)) for x in depths]

    first, again, other = order(1), order(1), order(2)
    assert first == again
    assert sorted(first) == list(range(8))
    assert first != other  # 8! orders: a clash would be a 1/40320 coincidence


def test_nyuv2_flip_mirrors_maps_and_negates_normal_x(nyu):
    root, written = nyu
    ds = data.nyuv2(root, batch_size=None, shuffle=False, augment=("flip",), seed=3)
    examples = as_list(ds)
    flipped = 0
    for i, (image, labels) in enumerate(examples):
        src = {k: written["train"][k][i] for k in ("image", "label", "depth", "normal")}
        if np.array_equal(image, src["image"]):
            np.testing.assert_array_equal(labels["normal"], src["normal"])
            continue
        flipped += 1
        np.testing.assert_array_equal(image, src["image"][:, ::-1])
        np.testing.assert_array_equal(labels["seg"], src["label"][:, ::-1].astype(int))
        np.testing.assert_array_equal(labels["depth"], src["depth"][:, ::-1])
        mirrored = src["normal"][:, ::-1] * np.array([-1.0, 1.0, 1.0], "float32")
        np.testing.assert_array_equal(labels["normal"], mirrored)
    assert 0 < flipped < 8
    # Deterministic given the seed; a new draw on each pass (epoch).
    again = as_list(data.nyuv2(root, batch_size=None, shuffle=False, augment=("flip",), seed=3))
    for (a, la), (b, lb) in zip(examples, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la["normal"], lb["normal"])
    second_epoch = as_list(ds)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(examples, second_epoch))


def test_scale_crop_zooms_and_divides_depth_by_the_scale():
    image = np.arange(4 * 6 * 1, dtype="float32").reshape(4, 6, 1)
    seg = np.arange(24, dtype="int32").reshape(4, 6)
    depth = np.full((4, 6, 1), 3.0, "float32")
    out_image, out = augment.scale_crop(
        image, {"seg": seg, "depth": depth}, 2.0, tf.constant([0.0, 1.0]),
        spatial_keys=("seg", "depth"), depth_keys=("depth",),
    )
    # Window: rows 0-1, columns 3-5 (right edge), upsampled x2 by nearest neighbour.
    expected = np.repeat(np.repeat(seg[:2, 3:], 2, 0), 2, 1)
    np.testing.assert_array_equal(out["seg"].numpy(), expected)
    np.testing.assert_allclose(out["depth"].numpy(), 1.5)  # 3 m seen 2x closer
    assert out_image.shape == (4, 6, 1)
    assert out_image.numpy().min() >= 3.0 and out_image.numpy().max() <= 11.0


def test_nyuv2_gradnorm_sizes_and_scale_crop_pipeline(nyu):
    root, _ = nyu
    ds = data.nyuv2(
        root, batch_size=4, image_size=(8, 8), label_size=(4, 4),
        augment=("flip", "scale_crop"), drop_remainder=True,
    )
    batches = as_list(ds)
    assert len(batches) == 2
    image, labels = batches[0]
    assert image.shape == (4, 8, 8, 3)
    assert labels["seg"].shape == (4, 4, 4) and labels["depth"].shape == (4, 4, 4, 1)
    assert set(np.unique(labels["seg"])) <= set(range(-1, 13))  # nearest: no blended ids
    norms = np.linalg.norm(labels["normal"], axis=-1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


def test_nyuv2_missing_and_corrupt_data_name_the_file(nyu, tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=r"nyuv2\.zip.*Nothing is downloaded"):
        data.nyuv2(str(tmp_path / "nowhere"))
    root = str(tmp_path / "broken")
    testing.write_nyuv2(root, num_train=3, num_val=1)
    bad = os.path.join(root, "train", "depth", "1.npy")
    with open(bad, "wb") as f:
        f.write(b"not an array")
    with pytest.raises(data.DatasetNotFoundError, match=r"train/depth/1\.npy.*could not be read"):
        data.nyuv2(root)
    data.nyuv2(root, tasks=("seg",))  # depth not needed: fine
    os.remove(os.path.join(root, "train", "label", "2.npy"))
    with pytest.raises(data.DatasetNotFoundError, match=r"label/2\.npy"):
        data.nyuv2(root, tasks=("seg",))
    with pytest.raises(ValueError, match="Received: split='test'"):
        data.nyuv2(root, split="test")


def test_npy_layout_decodes_every_stored_layout_exactly(tmp_path):
    """uint8 images, float64/int16 labels, Fortran order and big-endian files
    decode to the arrays NumPy wrote (the reader parses headers once, then reads
    raw bytes with TF ops)."""
    root = str(tmp_path / "nyu")
    rng = np.random.default_rng(0)
    images, labels, depths = [], [], []
    for split, count in (("train", 4), ("val", 1)):
        for folder in ("image", "label", "depth", "normal"):
            os.makedirs(os.path.join(root, split, folder))
        for i in range(count):
            image = rng.integers(0, 256, (6, 5, 3), dtype="uint8")
            label = rng.integers(-1, 13, (6, 5)).astype(">i2" if i % 2 else "float64")
            depth = np.asfortranarray(rng.random((6, 5, 1), dtype="float32"))
            if i == 3:
                depth = depth.astype(">f4")  # big-endian, Fortran order
            normal = rng.standard_normal((6, 5, 3)).astype("float32")
            for folder, array in (("image", image), ("label", label), ("depth", depth), ("normal", normal)):
                np.save(os.path.join(root, split, folder, f"{i}.npy"), array)
            if split == "train":
                images.append(image), labels.append(label), depths.append(depth)
    with pytest.raises(data.DatasetNotFoundError, match=r"label/1\.npy.*dtype >i2.*differs"):
        data.nyuv2(root, tasks=("seg",))
    for i in (1, 3):  # one label dtype per folder
        np.save(os.path.join(root, "train", "label", f"{i}.npy"), labels[i].astype("float64"))
    with pytest.raises(data.DatasetNotFoundError, match=r"depth/3\.npy.*dtype >f4.*differs"):
        data.nyuv2(root, tasks=("depth",))
    os.remove(os.path.join(root, "train", "depth", "3.npy"))
    np.save(os.path.join(root, "train", "depth", "3.npy"), np.asfortranarray(depths[3].astype("<f4")))
    examples = as_list(data.nyuv2(root, split="train", batch_size=None, shuffle=False, augment=False))
    for i, (image, task_labels) in enumerate(examples):
        np.testing.assert_allclose(image, images[i] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(task_labels["seg"], labels[i].astype(int))
        np.testing.assert_array_equal(task_labels["depth"], depths[i].astype("float32"))
    np.save(os.path.join(root, "train", "image", "0.npy"), images[0].astype("uint32"))
    with pytest.raises(data.DatasetNotFoundError, match=r"image/0\.npy.*dtype uint32 is not one"):
        data.nyuv2(root)


def test_npy_layout_reads_in_parallel_while_python_parses_code(nyu):
    """Regression: headers were parsed with `np.load` (`ast.literal_eval`) in
    tf.data's threads. On CPython 3.11.7 that races with `ast` use in another
    thread (autograph) whenever a garbage collection runs a finalizer mid-parse,
    and fails with "AST constructor recursion depth mismatch" (seen in CI)."""
    import ast
    import gc
    import threading
    import time

    class Finalized:
        def __del__(self):
            time.sleep(0)  # a finalizer that lets other threads run

    root, written = nyu
    ds = data.nyuv2(root, split="train", batch_size=2, shuffle=True, seed=1, repeat=True)
    errors = []

    def parse():
        code = "def f(x):\n    return [[[(x, {x: x})] for _ in x] for _ in x]\n" * 50
        try:
            for _ in range(200):
                a, b = Finalized(), Finalized()
                a.other, b.other = b, a  # cyclic: freed by the collector
                ast.parse(code)
                time.sleep(0.001)
        except SystemError as error:
            errors.append(error)

    threshold = gc.get_threshold()
    gc.set_threshold(50, 10**6, 10**6)  # frequent young-generation collections only
    thread = threading.Thread(target=parse)
    thread.start()
    try:
        for image, labels in ds:  # reads until the parser is done
            assert image.shape == (2, 12, 16, 3)
            a, b = Finalized(), Finalized()
            a.other, b.other = b, a
            if not thread.is_alive():
                break
    finally:
        thread.join()
        gc.set_threshold(*threshold)
    assert not errors


def test_readers_are_gin_configurable(nyu):
    root, _ = nyu
    gin.clear_config()
    try:
        gin.parse_config(
            f"nyuv2.data_dir = '{root}'\nnyuv2.split = 'val'\nnyuv2.tasks = 'roaming'\nnyuv2.batch_size = 3"
        )
        image, labels = next(iter(data.nyuv2()))
        assert image.shape == (3, 12, 16, 3) and len(labels) == 15
    finally:
        gin.clear_config()


# --------------------------------------------------------------- Cityscapes


def test_cityscapes_tasks_and_roaming_split(tmp_path):
    root = str(tmp_path)
    written = testing.write_cityscapes(root, num_train=3, num_val=2)
    ds = data.cityscapes(root, split="val", tasks=("seg", "seg19", "depth"), batch_size=None)
    examples = as_list(ds)
    assert len(examples) == 2
    for i, (image, labels) in enumerate(examples):
        assert image.shape == (8, 16, 3)
        np.testing.assert_array_equal(labels["seg"], written["val"]["label_7"][i].astype(int))
        np.testing.assert_array_equal(labels["seg19"], written["val"]["label_19"][i].astype(int))
        np.testing.assert_array_equal(labels["depth"], written["val"]["depth"][i])
    image, labels = next(iter(data.cityscapes(root, tasks="roaming", split="val", batch_size=None)))
    assert list(labels) == list(data.CITYSCAPES_ROAMING_TASKS) and len(labels) == 8
    np.testing.assert_array_equal(
        labels["seg_sky"].numpy()[..., 0], (written["val"]["label_7"][0] == 4).astype("float32")
    )
    only_7 = str(tmp_path / "no19")
    testing.write_cityscapes(only_7, num_train=2, num_val=1, with_19=False)
    data.cityscapes(only_7)
    with pytest.raises(data.DatasetNotFoundError, match=r"train/label_19"):
        data.cityscapes(only_7, tasks=("seg19",))


# ------------------------------------------------------------------- CelebA


@pytest.mark.parametrize("layout", ["release", "tfds"])
def test_celeba_groups_and_attributes_from_both_sources(tmp_path, layout):
    root = str(tmp_path)
    written = testing.write_celeba(root, num_train=3, num_val=2, num_test=1, layout=layout)
    ds = data.celeba(root, split="val", batch_size=None, image_size=(16, 16))
    examples = as_list(ds)
    assert len(examples) == 2
    _, attributes = written["validation"]
    rows = []
    for image, labels in examples:
        assert image.shape == (16, 16, 3) and 0.0 <= image.min() and image.max() <= 1.0
        assert list(labels) == list(data.CELEBA_GROUPS)
        assert [labels[g].shape for g in labels] == [(len(v),) for v in data.CELEBA_GROUPS.values()]
        rows.append(tuple(np.concatenate(list(labels.values()))))
    # tfds keeps records in its own order: compare the examples as a set.
    expected = []
    for attr in attributes:
        groups = [[attr[data.CELEBA_ATTRIBUTES.index(n)] for n in names] for names in data.CELEBA_GROUPS.values()]
        expected.append(tuple(np.concatenate(groups).astype("float32")))
    assert sorted(rows) == sorted(expected)
    assert sum(len(v) for v in data.CELEBA_GROUPS.values()) == 40
    assert sorted(a for v in data.CELEBA_GROUPS.values() for a in v) == sorted(data.CELEBA_ATTRIBUTES)
    image, labels = next(iter(data.celeba(root, split="test", tasks="attributes", batch_size=None, image_size=8)))
    assert len(labels) == 40 and labels["Smiling"].shape == (1,)
    np.testing.assert_array_equal(
        np.concatenate([labels[a] for a in data.CELEBA_ATTRIBUTES]), written["test"][1][0].astype("float32")
    )
    train = as_list(data.celeba(root, batch_size=2, image_size=8, seed=5))
    assert [len(b[0]) for b in train] == [2, 1]


def test_celeba_release_subfolders(tmp_path):
    written = testing.write_celeba(str(tmp_path), num_train=2, num_val=1, num_test=1)
    for name, folder in (("list_attr_celeba.txt", "Anno"), ("list_eval_partition.txt", "Eval"), ("img_align_celeba", "Img")):
        os.makedirs(tmp_path / folder, exist_ok=True)
        os.rename(tmp_path / name, tmp_path / folder / name)
    image, labels = next(iter(data.celeba(str(tmp_path), split="test", tasks=("Male", "nose"), batch_size=None, image_size=8)))
    attr = written["test"][1][0]
    assert labels["Male"].numpy().tolist() == [float(attr[data.CELEBA_ATTRIBUTES.index("Male")])]
    assert labels["nose"].numpy().tolist() == [float(attr[7]), float(attr[27])]  # Big_Nose, Pointy_Nose


def test_celeba_missing_and_corrupt_files(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=r"list_attr_celeba\.txt.*download_and_prepare"):
        data.celeba(str(tmp_path))
    testing.write_celeba(str(tmp_path), num_train=2, num_val=1, num_test=1)
    path = tmp_path / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + [lines[3].rsplit(" ", 2)[0]]) + "\n")
    with pytest.raises(data.DatasetNotFoundError, match=r"list_attr_celeba\.txt.*has 39 fields"):
        data.celeba(str(tmp_path))
    os.remove(tmp_path / "list_eval_partition.txt")
    with pytest.raises(data.DatasetNotFoundError, match=r"list_eval_partition\.txt"):
        data.celeba(str(tmp_path))


def _corrupt(path, how):
    """Truncates an image file to half its size, or replaces it by text."""
    with open(path, "rb") as f:
        contents = f.read()
    with open(path, "wb") as f:
        f.write(contents[: len(contents) // 2] if how == "truncate" else b"<html>404</html>")


def test_celeba_corrupt_image_is_named(tmp_path):
    root = str(tmp_path)
    written = testing.write_celeba(root, num_train=3, num_val=1, num_test=1, image_shape=(40, 30))
    truncated, garbage = written["train"][0][1], written["validation"][0][0]
    _corrupt(os.path.join(root, "img_align_celeba", truncated), "truncate")
    _corrupt(os.path.join(root, "img_align_celeba", garbage), "garbage")
    for split, name in (("train", truncated), ("val", garbage)):
        ds = data.celeba(root, split=split, batch_size=2, shuffle=False, augment=False, image_size=8)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"CelebA: cannot decode the image file \S*" + name):
            as_list(ds)
    assert len(as_list(data.celeba(root, split="test", batch_size=None, image_size=8))) == 1


# --------------------------------------------------------------------- MTFL


@pytest.fixture(scope="module")
def mtfl_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mtfl"))
    return root, testing.write_mtfl(root, num_train=6, num_test=3)


def test_mtfl_landmarks_normalised_and_classes_recoded(mtfl_dir):
    root, written = mtfl_dir
    examples = as_list(data.mtfl(root, split="test", batch_size=None, image_size=(40, 40)))
    assert len(examples) == 3
    for (image, labels), (_, points, classes, (h, w)) in zip(examples, written["test"]):
        assert image.shape == (40, 40, 3)
        scale = np.array([w] * 5 + [h] * 5, "float32")
        np.testing.assert_allclose(labels["landmarks"], points / scale, rtol=1e-6)
        assert labels["gender"] == classes[0] - 1
        assert labels["smile"] == (1 if classes[1] == 1 else 0)
        assert labels["glasses"] == (1 if classes[2] == 1 else 0)
        assert labels["pose"] == classes[3] - 1
    gray = next(iter(data.mtfl(root, split="test", grayscale=True, image_size=160, batch_size=2)))
    assert gray[0].shape == (2, 160, 160, 1)


def test_mtfl_flip_swaps_eyes_mouth_corners_and_pose(mtfl_dir):
    root, written = mtfl_dir
    plain = as_list(data.mtfl(root, batch_size=None, shuffle=False, augment=False))
    aug = as_list(data.mtfl(root, batch_size=None, shuffle=False, augment=True, seed=4))
    flipped = 0
    for (image, labels), (aimage, alabels) in zip(plain, aug):
        if np.array_equal(image, aimage):
            np.testing.assert_array_equal(labels["landmarks"], alabels["landmarks"])
            continue
        flipped += 1
        np.testing.assert_allclose(aimage, image[:, ::-1], atol=1e-6)
        x, y = labels["landmarks"][:5], labels["landmarks"][5:]
        # left eye <- mirrored right eye, nose stays, mouth corners swap
        np.testing.assert_allclose(alabels["landmarks"][:5], 1 - x[[1, 0, 2, 4, 3]], atol=1e-6)
        np.testing.assert_allclose(alabels["landmarks"][5:], y[[1, 0, 2, 4, 3]], atol=1e-6)
        assert alabels["pose"] == 4 - labels["pose"]
        assert alabels["gender"] == labels["gender"]
    assert 0 < flipped < 6
    # The mirrored face still has its left eye left of its right eye.
    for _, labels in aug:
        assert labels["landmarks"][0] < labels["landmarks"][1]


def test_mtfl_missing_image_is_named(mtfl_dir, tmp_path):
    root, written = mtfl_dir
    with pytest.raises(data.DatasetNotFoundError, match=r"training\.txt.*TCDCN"):
        data.mtfl(str(tmp_path))
    (tmp_path / "testing.txt").write_text(" lfw_5590\\missing.jpg" + " 1.0" * 10 + " 1 1 1 3\n")
    with pytest.raises(data.DatasetNotFoundError, match=r"lfw_5590/missing\.jpg"):
        data.mtfl(str(tmp_path), split="test")
    (tmp_path / "testing.txt").write_text(" lfw_5590\\a.jpg 1 2 3\n")
    with pytest.raises(data.DatasetNotFoundError, match=r"line 1 is not a valid annotation"):
        data.mtfl(str(tmp_path), split="test")


def test_mtfl_corrupt_image_is_named_mid_iteration(tmp_path):
    root = str(tmp_path)
    written = testing.write_mtfl(root, num_train=3, num_test=2)
    truncated, garbage = written["train"][1][0], written["test"][0][0]
    _corrupt(os.path.join(root, *truncated.split("\\")), "truncate")
    _corrupt(os.path.join(root, *garbage.split("\\")), "garbage")
    for split, name, good in (("train", truncated, 1), ("test", garbage, 0)):
        it = iter(data.mtfl(root, split=split, batch_size=None, shuffle=False, augment=False))
        for _ in range(good):  # the images before the corrupt one still load
            image, _ = next(it)
            assert image.shape == (40, 40, 3)
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            next(it)
        message = str(error.value)
        assert "MTFL: cannot decode the image file" in message
        assert os.path.join(root, *name.split("\\")) in message


# --------------------------------------------------------------- MultiMNIST


def test_multimnist_left_and_right_digits(tmp_path):
    path = str(tmp_path / "mnist.npz")
    testing.write_mnist_npz(path, num_train=30, num_test=10)
    examples = as_list(data.multimnist(path, batch_size=None, image_size=36, shuffle=False))
    assert len(examples) == 30
    for image, labels in examples:
        assert image.shape == (36, 36, 1)
        # Pixel (4, 4) is covered only by the left digit, (31, 31) only by the
        # right one (shifts <= 3); the fixture digit c has intensity 20 (c + 1).
        assert image[4, 4, 0] * 255 == pytest.approx(20 * (labels["left"] + 1), abs=1e-3)
        assert image[31, 31, 0] * 255 == pytest.approx(20 * (labels["right"] + 1), abs=1e-3)
    same = as_list(data.multimnist(path, batch_size=None, image_size=36, shuffle=False))
    other = as_list(data.multimnist(path, batch_size=None, image_size=36, shuffle=False, seed=1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(examples, same))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(examples, other))
    image, labels = next(iter(data.multimnist(path, split="test", batch_size=4)))
    assert image.shape == (4, 28, 28, 1) and labels["left"].dtype == tf.int32
    np.savez(path, x_train=np.zeros((3, 5, 5)), y_train=np.zeros(3))
    with pytest.raises(data.DatasetNotFoundError, match=r"mnist\.npz.*expected \(N, 28, 28\)"):
        data.multimnist(path)
