"""The architecture registry: switch multi-task architectures with one name.

Each entry maps a name to a gin-configurable model builder returning a
`MultiTaskModel` (`mmoe_multitask`, `ple_multitask`, ...). The launcher's
`--arch` flag binds `train.model` to the named builder, so

    python -m launch.train --gin_file=gin/arch_nyuv2_mmoe.gin --arch=ple ...

trains PLE with everything else of the config (its `arch_*_experts_base.gin`
configures every expert architecture's builder for that dataset).

Names are matched case-insensitively, with `-` read as `_` (`"DSelect-k"`
is `"dselect_k"`). Builders are given as `"module:function"` and imported
on lookup, so registering costs nothing at import time.

Example:

>>> from keras_mtl.models import architectures
>>> build = architectures.get_architecture("MMoE")
>>> model = build({"a": 1, "b": 1}, input_shape=(10,))
"""

import importlib

_REGISTRY = {}


def _key(name):
    return str(name).strip().lower().replace("-", "_")


def register_architecture(name, builder):
    """Registers `builder` (a callable or `"module:function"`) under `name`."""
    key = _key(name)
    if key in _REGISTRY and _REGISTRY[key] != builder:
        raise ValueError(f"Architecture '{name}' is already registered.")
    _REGISTRY[key] = builder


def architecture_names():
    """Sorted registered names."""
    return sorted(_REGISTRY)


def get_architecture(name):
    """The model builder registered under `name`."""
    key = _key(name)
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown architecture {name!r}. Expected one of {architecture_names()}."
        )
    builder = _REGISTRY[key]
    if isinstance(builder, str):
        module, function = builder.split(":")
        builder = getattr(importlib.import_module(module), function)
    return builder


def gin_binding(name):
    """The gin binding that makes `train.model` the builder of `name`."""
    return f"train.model = @{get_architecture(name).__name__}"


# Expert-based architectures (issue 14).
register_architecture("mmoe", "keras_mtl.models.experts:mmoe_multitask")
register_architecture("cgc", "keras_mtl.models.experts:cgc_multitask")
register_architecture("ple", "keras_mtl.models.experts:ple_multitask")
register_architecture("dselect_k", "keras_mtl.models.experts:dselect_k_multitask")
# Column / attention / branching architectures (issue 14).
register_architecture("mtan", "keras_mtl.models.mtan:mtan_multitask")
register_architecture("cross_stitch", "keras_mtl.models.cross_stitch:cross_stitch_multitask")
register_architecture("ltb", "keras_mtl.models.ltb:ltb_multitask")
