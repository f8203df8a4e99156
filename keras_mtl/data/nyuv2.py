"""NYUv2 (13-class segmentation, depth, surface normals) from the `.npy` layout."""

import gin

from keras_mtl.data import _common, _npy_layout, augment as augment_lib

NYUV2_CLASSES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "painting", "sofa", "table", "tv", "wall", "window",
)
"""The 13 NYUv2 classes (Couprie et al. 2013 grouping), label ids 0..12."""

NYUV2_TASKS = ("seg", "depth", "normal")
"""The standard 3-task split (GradNorm NYUv2+seg, IMTL, Maximum Roaming STL)."""

NYUV2_ROAMING_TASKS = tuple(f"seg_{c}" for c in NYUV2_CLASSES) + ("depth", "normal")
"""The 15-task split of Maximum Roaming: 13 binary segmentations + depth + normals."""

HOW_TO_OBTAIN = (
    "Download the preprocessed NYUv2 of Liu et al. (MTAN, "
    "https://github.com/lorenmt/mtan, 'nyuv2.zip'), unzip it and pass the "
    "folder holding train/ and val/ (each with image/, label/, depth/, normal/) "
    "as `data_dir`."
)


def _task_list(tasks):
    if tasks == "standard":
        return NYUV2_TASKS
    if tasks == "roaming":
        return NYUV2_ROAMING_TASKS
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    for task in tasks:
        _common.check_choice("tasks", task, NYUV2_TASKS + NYUV2_ROAMING_TASKS[:13])
    if not tasks:
        raise ValueError("Invalid value received for argument `tasks`. Expected at least one task. Received: tasks=()")
    return tasks


@gin.configurable
def nyuv2(
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
    """NYUv2 as a tf.data pipeline of `(image, {task: label})`.

    Reads the preprocessed `.npy` layout (288x384 images in the MTAN release):
    `<data_dir>/<split>/{image,label,depth,normal}/<i>.npy`. Nothing is
    downloaded; a missing or corrupt file raises `DatasetNotFoundError`
    naming it.

    Yields (batched along a leading axis when `batch_size` is set):
        image: float32 (H, W, 3) in [0, 1].
        "seg": int32 (h, w), class id in [0, 13) or -1 (unlabelled; use
            `SparseCategoricalCrossentropy(ignore_class=-1)` and
            `MeanIoU(13, ignore_index=-1)`).
        "seg_<class>" (Maximum Roaming split): float32 (h, w, 1) in {0, 1},
            1 where the pixel has that class (unlabelled pixels are 0).
        "depth": float32 (h, w, 1), metres, 0 where missing.
        "normal": float32 (h, w, 3), unit vectors (x right, y, z), zero
            vector where missing.
    (h, w) = `label_size`, else `image_size`, else the stored size.

    Args:
        data_dir: folder holding `train/` and `val/`.
        split: `"train"` or `"val"`. Defaults to `"train"`.
        tasks: `"standard"` (seg, depth, normal), `"roaming"` (the 15 tasks
            of `NYUV2_ROAMING_TASKS`) or a sequence of task names from those.
            Defaults to `"standard"`.
        batch_size: examples per batch, or None for unbatched. Defaults to 8.
        shuffle: shuffle with `seed` (reshuffled each epoch). Defaults to
            True on `"train"`, False otherwise.
        seed: seed of shuffling and augmentation. Defaults to 0.
        augment: None (random horizontal flips on `"train"` only, as
            GradNorm), a bool, or names from ("flip", "scale_crop"); the
            scale-crop is MTAN's (scales 1, 1.2, 1.5, depth divided by the
            scale). Flips negate the x component of normals.
        image_size: (height, width) to resize the image to (bilinear), e.g.
            (320, 320) for GradNorm. Defaults to the stored size.
        label_size: (height, width) of dense labels (nearest neighbour), e.g.
            (80, 80) for GradNorm. Defaults to `image_size`.
        drop_remainder: drop the last incomplete batch. Defaults to False.
        repeat: repeat forever (for step-based training). Defaults to False.

    Returns:
        A `tf.data.Dataset`.

    Example:

    ```python
    ds = keras_mtl.data.nyuv2("/data/nyuv2", split="train", batch_size=24,
                              image_size=(320, 320), label_size=(80, 80))
    image, labels = next(iter(ds))  # labels: {"seg", "depth", "normal"}
    ```

    Reference:
        Silberman et al., "Indoor Segmentation and Support Inference from
        RGBD Images", ECCV 2012; Chen et al., "GradNorm", ICML 2018 (Sec. 5);
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021.
    """
    _common.check_choice("split", split, ("train", "val"))
    tasks = _task_list(tasks)
    _common.check_batch_size(batch_size)
    image_size = _common.check_size("image_size", image_size)
    label_size = _common.check_size("label_size", label_size)
    augment = augment_lib.parse_augment(augment, split)
    if shuffle is None:
        shuffle = split == "train"

    binary = {t: NYUV2_CLASSES.index(t[4:]) for t in tasks if t.startswith("seg_")}
    folders = ["image"]
    if "seg" in tasks or binary:
        folders.append("label")
    if "depth" in tasks:
        folders.append("depth")
    if "normal" in tasks:
        folders.append("normal")
    scanned = _npy_layout.scan("NYUv2", data_dir, split, folders, HOW_TO_OBTAIN)

    def make_labels(arrays):
        image = _npy_layout.to_image(arrays["image"])
        labels = {}
        for task in tasks:
            if task == "seg":
                labels[task] = _npy_layout.to_class_map(arrays["label"], 13)
            elif task == "depth":
                labels[task] = _npy_layout.to_dense(arrays["depth"])
            elif task == "normal":
                labels[task] = _npy_layout.to_dense(arrays["normal"])
            else:
                classes = _npy_layout.to_class_map(arrays["label"], 13)
                labels[task] = _npy_layout.to_binary_mask(classes, binary[task])
        return image, labels

    return _npy_layout.pipeline(
        dataset="NYUv2", data_dir=data_dir, split=split, folders=folders,
        meta_indices=scanned, make_labels=make_labels, spatial_keys=tasks,
        normal_keys=[t for t in tasks if t == "normal"],
        depth_keys=[t for t in tasks if t == "depth"], batch_size=batch_size,
        shuffle=shuffle, seed=seed, augment=augment, image_size=image_size,
        label_size=label_size, drop_remainder=drop_remainder, repeat=repeat,
    )
