"""Cityscapes (7- or 19-class segmentation, depth) from the `.npy` layout."""

import gin

from keras_mtl.data import _common, _npy_layout, augment as augment_lib

CITYSCAPES_CLASSES_7 = (
    "flat", "construction", "object", "nature", "sky", "human", "vehicle",
)
"""The 7 Cityscapes categories (void excluded), label ids 0..6 of `label_7`."""

CITYSCAPES_TASKS = ("seg", "depth")
"""The standard 2-task split (7-class segmentation + depth; MTAN, IMTL)."""

CITYSCAPES_ROAMING_TASKS = tuple(f"seg_{c}" for c in CITYSCAPES_CLASSES_7) + ("depth",)
"""The 8-task split of Maximum Roaming: 7 binary segmentations + depth."""

HOW_TO_OBTAIN = (
    "Download the preprocessed Cityscapes of Liu et al. (MTAN, "
    "https://github.com/lorenmt/mtan, 'cityscapes.zip', 128x256), unzip it and "
    "pass the folder holding train/ and val/ (each with image/, label_7/, "
    "depth/ and, for 19 classes, label_19/) as `data_dir`."
)

_ALL_TASKS = ("seg", "seg19", "depth") + CITYSCAPES_ROAMING_TASKS[:7]


def _task_list(tasks):
    if tasks == "standard":
        return CITYSCAPES_TASKS
    if tasks == "roaming":
        return CITYSCAPES_ROAMING_TASKS
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("Invalid value received for argument `tasks`. Expected at least one task. Received: tasks=()")
    for task in tasks:
        _common.check_choice("tasks", task, _ALL_TASKS)
    return tasks


@gin.configurable
def cityscapes(
    data_dir,
    split="train",
    tasks="standard",
    batch_size=8,
    shuffle=None,
    seed=0,
    augment=None,
    image_size=None,
    label_size=None,
    drop_remainder=False,
    repeat=False,
):
    """Cityscapes as a tf.data pipeline of `(image, {task: label})`.

    Reads the preprocessed `.npy` layout (128x256 in the MTAN release):
    `<data_dir>/<split>/{image,label_7,label_19,depth}/<i>.npy`. Nothing is
    downloaded; a missing or corrupt file raises `DatasetNotFoundError`
    naming it.

    Yields (batched along a leading axis when `batch_size` is set):
        image: float32 (H, W, 3) in [0, 1].
        "seg": int32 (h, w), category id in [0, 7) or -1 (void / unlabelled).
        "seg19": int32 (h, w), class id in [0, 19) or -1 (needs `label_19/`).
        "seg_<category>" (Maximum Roaming split): float32 (h, w, 1) in {0, 1}.
        "depth": float32 (h, w, 1), as stored (MTAN: scaled inverse depth),
            0 where missing.

    Args:
        data_dir: folder holding `train/` and `val/`.
        split: `"train"` or `"val"`. Defaults to `"train"`.
        tasks: `"standard"` (seg, depth), `"roaming"` (the 8 tasks of
            `CITYSCAPES_ROAMING_TASKS`) or a sequence of names from
            ("seg", "seg19", "depth", "seg_<category>"). Defaults to
            `"standard"`.
        batch_size, shuffle, seed, augment, image_size, label_size,
        drop_remainder, repeat: as `keras_mtl.data.nyuv2`.

    Returns:
        A `tf.data.Dataset`.

    Example:

    ```python
    ds = keras_mtl.data.cityscapes("/data/cityscapes", tasks="roaming",
                                   batch_size=8)
    ```

    Reference:
        Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene
        Understanding", CVPR 2016; Pascal et al., "Maximum Roaming Multi-Task
        Learning", AAAI 2021 (8-task split); Liu et al., "Towards Impartial
        Multi-task Learning", ICLR 2021.
    """
    _common.check_choice("split", split, ("train", "val"))
    tasks = _task_list(tasks)
    _common.check_batch_size(batch_size)
    image_size = _common.check_size("image_size", image_size)
    label_size = _common.check_size("label_size", label_size)
    augment = augment_lib.parse_augment(augment, split)
    if shuffle is None:
        shuffle = split == "train"

    binary = {t: CITYSCAPES_CLASSES_7.index(t[4:]) for t in tasks if t.startswith("seg_")}
    folders = ["image"]
    if "seg" in tasks or binary:
        folders.append("label_7")
    if "seg19" in tasks:
        folders.append("label_19")
    if "depth" in tasks:
        folders.append("depth")
    scanned = _npy_layout.scan("Cityscapes", data_dir, split, folders, HOW_TO_OBTAIN)

    def make_labels(arrays):
        image = _npy_layout.to_image(arrays["image"])
        labels = {}
        for task in tasks:
            if task == "seg":
                labels[task] = _npy_layout.to_class_map(arrays["label_7"], 7)
            elif task == "seg19":
                labels[task] = _npy_layout.to_class_map(arrays["label_19"], 19)
            elif task == "depth":
                labels[task] = _npy_layout.to_dense(arrays["depth"])
            else:
                classes = _npy_layout.to_class_map(arrays["label_7"], 7)
                labels[task] = _npy_layout.to_binary_mask(classes, binary[task])
        return image, labels

    return _npy_layout.pipeline(
        dataset="Cityscapes", data_dir=data_dir, split=split, folders=folders,
        meta_indices=scanned, make_labels=make_labels, spatial_keys=tasks,
        normal_keys=(), depth_keys=[t for t in tasks if t == "depth"],
        batch_size=batch_size, shuffle=shuffle, seed=seed, augment=augment,
        image_size=image_size, label_size=label_size,
        drop_remainder=drop_remainder, repeat=repeat,
    )
