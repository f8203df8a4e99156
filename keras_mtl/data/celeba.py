"""CelebA: 40 binary face attributes, as 40 tasks or as Maximum Roaming's 8 groups.

Two on-disk sources, both local (nothing is downloaded):

1. a tensorflow-datasets data dir where `celeb_a` is already prepared
   (`<data_dir>/celeb_a/<version>/dataset_info.json` + TFRecords), read
   with `tfds.builder_from_directory`, which needs neither network nor a
   download step;
2. the official release files: `list_attr_celeba.txt`,
   `list_eval_partition.txt` and the folder `img_align_celeba/` of JPEGs,
   either side by side in `data_dir` or in the release's `Anno/`, `Eval/`,
   `Img/` sub-folders.
"""

import os

import gin
import numpy as np
import tensorflow as tf

from keras_mtl.data import _common, augment as augment_lib

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes",
    "Bald", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
"""The 40 attributes in the order of `list_attr_celeba.txt`."""

CELEBA_GROUPS = {
    "global": ("Attractive", "Blurry", "Chubby", "Double_Chin", "Heavy_Makeup",
               "Male", "Oval_Face", "Pale_Skin", "Young"),
    "eyes": ("Bags_Under_Eyes", "Eyeglasses", "Narrow_Eyes", "Arched_Eyebrows",
             "Bushy_Eyebrows"),
    "hair": ("Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair",
             "Gray_Hair", "Receding_Hairline", "Straight_Hair", "Wavy_Hair"),
    "mouth": ("Big_Lips", "Mouth_Slightly_Open", "Smiling", "Wearing_Lipstick"),
    "nose": ("Big_Nose", "Pointy_Nose"),
    "beard": ("5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns"),
    "cheeks": ("High_Cheekbones", "Rosy_Cheeks"),
    "wearings": ("Wearing_Earrings", "Wearing_Hat", "Wearing_Necklace",
                 "Wearing_Necktie"),
}
"""Maximum Roaming's 8 attribute groups (appendix, Table 4), in table order."""

HOW_TO_OBTAIN = (
    "Either prepare tensorflow-datasets' `celeb_a` once on a machine with "
    "network access (`tfds.builder('celeb_a', data_dir=...).download_and_prepare()`) "
    "and copy that data dir, or download the official CelebA release "
    "(http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: Img/img_align_celeba.zip, "
    "Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt) and unzip the images."
)

_SPLITS = {"train": 0, "validation": 1, "test": 2}
_SPLIT_ALIASES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def _find(data_dir, name, subdir):
    for candidate in (os.path.join(data_dir, name), os.path.join(data_dir, subdir, name)):
        if os.path.exists(candidate):
            return candidate
    return None


def _raw_files(data_dir):
    attr = _find(data_dir, "list_attr_celeba.txt", "Anno")
    partition = _find(data_dir, "list_eval_partition.txt", "Eval")
    images = _find(data_dir, "img_align_celeba", "Img")
    if attr or partition or images:
        for path, name in ((attr, "list_attr_celeba.txt"), (partition, "list_eval_partition.txt"), (images, "img_align_celeba")):
            if path is None:
                raise _common.missing("CelebA", os.path.join(data_dir, name), HOW_TO_OBTAIN)
        return attr, partition, images
    return None


def _tfds_dir(data_dir):
    root = os.path.join(data_dir, "celeb_a")
    if not os.path.isdir(root):
        return None
    versions = [v for v in os.listdir(root) if os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
    if not versions:
        raise _common.missing(
            "CelebA", os.path.join(root, "<version>", "dataset_info.json"), HOW_TO_OBTAIN,
            detail="no prepared version of `celeb_a` was found there",
        )
    versions.sort(key=lambda v: tuple(int(p) if p.isdigit() else 0 for p in v.split(".")))
    return os.path.join(root, versions[-1])


def _parse_attributes(path):
    with open(path) as f:
        lines = [line.split() for line in f.read().splitlines() if line.strip()]
    try:
        header = lines[1]
        if tuple(header[-40:]) != CELEBA_ATTRIBUTES:
            raise ValueError(f"unexpected header {header[:3]}...")
        table = {}
        for row in lines[2:]:
            if len(row) != 41:
                raise ValueError(f"row {row[:2]}... has {len(row)} fields, expected 41")
            table[row[0]] = [int(v) > 0 for v in row[1:]]
    except (IndexError, ValueError) as error:
        raise _common.missing(
            "CelebA", path, HOW_TO_OBTAIN,
            detail=f"it is not a valid CelebA attribute file ({error})",
        ) from None
    return table


def _parse_partition(path, split_id):
    names = []
    with open(path) as f:
        for number, line in enumerate(f):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise _common.missing(
                    "CelebA", path, HOW_TO_OBTAIN,
                    detail=f"line {number + 1} is not '<image> <0|1|2>'",
                )
            if int(fields[1]) == split_id:
                names.append(fields[0])
    return names


def _task_spec(tasks):
    """{task: list of attribute indices}."""
    if tasks == "groups":
        tasks = tuple(CELEBA_GROUPS)
    elif tasks == "attributes":
        tasks = CELEBA_ATTRIBUTES
    elif isinstance(tasks, str):
        tasks = (tasks,)
    spec = {}
    for task in tasks:
        if task in CELEBA_GROUPS:
            spec[task] = [CELEBA_ATTRIBUTES.index(a) for a in CELEBA_GROUPS[task]]
        elif task in CELEBA_ATTRIBUTES:
            spec[task] = [CELEBA_ATTRIBUTES.index(task)]
        else:
            raise ValueError(
                "Invalid value received for argument `tasks`. Expected "
                "'groups', 'attributes' or names of CELEBA_GROUPS / "
                f"CELEBA_ATTRIBUTES. Received: task {task!r}"
            )
    if not spec:
        raise ValueError("Invalid value received for argument `tasks`. Expected at least one task. Received: tasks=()")
    return spec


@gin.configurable
def celeba(
    data_dir,
    split="train",
    tasks="groups",
    batch_size=256,
    shuffle=None,
    seed=0,
    augment=None,
    image_size=(64, 64),
    drop_remainder=False,
    repeat=False,
):
    """CelebA as a tf.data pipeline of `(image, {task: attributes})`.

    Yields (batched along a leading axis when `batch_size` is set):
        image: float32 (h, w, 3) in [0, 1], the aligned 178x218 face resized
            to `image_size`.
        {task: float32 (k,) in {0, 1}}: the task's attributes (1 = present),
            k = len(CELEBA_GROUPS[task]) for a group, 1 for an attribute.

    Args:
        data_dir: a tfds data dir with `celeb_a` prepared, or a folder with
            the official release files (see the module docstring).
        split: `"train"`, `"val"` (alias `"validation"`) or `"test"`, the
            official partition. Defaults to `"train"`.
        tasks: `"groups"` (8 tasks, Maximum Roaming), `"attributes"` (40
            tasks, IMTL / MGDA-UB) or a sequence of group / attribute names.
            Defaults to `"groups"`.
        batch_size: Defaults to 256 (Maximum Roaming).
        shuffle: Defaults to True on `"train"`.
        seed: seed of shuffling and augmentation. Defaults to 0.
        augment: None (random horizontal flips on `"train"`), a bool or
            `("flip",)`. Attributes are symmetric, so labels are unchanged.
        image_size: (height, width). Defaults to `(64, 64)` (Maximum Roaming).
        drop_remainder: Defaults to False.
        repeat: repeat forever. Defaults to False.

    Returns:
        A `tf.data.Dataset`.

    Example:

    ```python
    ds = keras_mtl.data.celeba("~/tensorflow_datasets", split="val")
    image, labels = next(iter(ds))  # labels["hair"].shape == (256, 9)
    ```

    Reference:
        Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015;
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (appendix Table 4); Liu et al., "Towards Impartial Multi-task
        Learning", ICLR 2021.
    """
    if split not in _SPLIT_ALIASES:
        _common.check_choice("split", split, tuple(_SPLIT_ALIASES))
    split = _SPLIT_ALIASES[split]
    spec = _task_spec(tasks)
    _common.check_batch_size(batch_size)
    image_size = _common.check_size("image_size", image_size)
    augment = augment_lib.parse_augment(augment, split)
    if "scale_crop" in augment:
        raise ValueError(
            "Invalid value received for argument `augment`. Expected None, a "
            f"bool or ('flip',) for CelebA. Received: augment={augment!r}"
        )
    if shuffle is None:
        shuffle = split == "train"
    data_dir = os.path.expanduser(data_dir)
    _common.require_dir(data_dir, "CelebA", HOW_TO_OBTAIN)

    raw = _raw_files(data_dir)
    if raw is not None:
        ds = _raw_dataset(raw, split, shuffle, seed)
    else:
        builder_dir = _tfds_dir(data_dir)
        if builder_dir is None:
            raise _common.missing(
                "CelebA", os.path.join(data_dir, "list_attr_celeba.txt"), HOW_TO_OBTAIN,
                detail=f"neither the release files nor a prepared tfds `celeb_a` "
                f"({os.path.join(data_dir, 'celeb_a')}) are there",
            )
        ds = _tfds_dataset(builder_dir, split, shuffle, seed)
    indices = {task: tf.constant(idx, "int32") for task, idx in spec.items()}

    def to_example(image, attributes):
        image = tf.image.resize(tf.cast(image, "float32") / 255.0, image_size)
        image.set_shape(image_size + (3,))
        labels = {task: tf.gather(attributes, idx) for task, idx in indices.items()}
        return image, labels

    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    if "flip" in augment:
        ds = _common.with_random_seeds(ds, seed).map(
            lambda example, s: augment_lib.random_horizontal_flip(*example, s),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return _common.finish(ds, batch_size, drop_remainder, repeat)


def _raw_dataset(raw, split, shuffle, seed):
    """(uint8 image, float32 (40,) attributes) from the official files."""
    attr_path, partition_path, image_dir = raw
    names = _parse_partition(partition_path, _SPLITS[split])
    table = _parse_attributes(attr_path)
    present = set(os.listdir(image_dir))
    for name in names:
        if name not in table:
            raise _common.missing(
                "CelebA", attr_path, HOW_TO_OBTAIN, detail=f"it has no row for image {name!r}",
            )
        if name not in present:
            raise _common.missing("CelebA", os.path.join(image_dir, name), HOW_TO_OBTAIN)
    paths = [os.path.join(image_dir, n) for n in names]
    attributes = np.asarray([table[n] for n in names], "float32").reshape(-1, 40)
    ds = tf.data.Dataset.from_tensor_slices((paths, attributes))
    ds = _common.shuffled(ds, shuffle, len(paths), seed)  # paths: a full shuffle is cheap
    ds = ds.map(
        lambda p, a: (tf.io.decode_jpeg(_common.read_image_file(p, "CelebA"), channels=3), a),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds


def _tfds_dataset(builder_dir, split, shuffle, seed):
    """(uint8 image, float32 (40,) attributes) from a prepared tfds `celeb_a`.

    Shuffling reads the record files in a seeded order and mixes a buffer
    of 2,000 decoded images (~0.25 GB), the usual tfds compromise.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(builder_dir)
        ds = builder.as_dataset(
            split=split, shuffle_files=bool(shuffle),
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except Exception as error:  # noqa: BLE001 - report any unreadable tfds dir
        raise _common.missing(
            "CelebA", os.path.join(builder_dir, "dataset_info.json"), HOW_TO_OBTAIN,
            detail=f"the prepared tfds `celeb_a` could not be read ({error})",
        ) from None

    def convert(example):
        attributes = tf.stack(
            [tf.cast(example["attributes"][a], "float32") for a in CELEBA_ATTRIBUTES]
        )
        return example["image"], attributes

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        ds = ds.shuffle(2_000, seed=seed, reshuffle_each_iteration=True)
    return ds
