"""Where the shipped gin configs live, and `--gin_file` resolution.

The experiment configs ship inside the package (`keras_mtl/gin/*.gin` in an
installed wheel; the top-level `gin/` folder of a checkout), so a launcher
finds them from any working directory:

    keras-mtl-train --gin_file=toy_gradnorm_t2.gin --model_dir=runs/t2
    keras-mtl-train --gin_file=gin/toy_gradnorm_t2.gin --model_dir=runs/t2

A `--gin_file` is read as given when that path exists (relative to the
working directory, or absolute: one's own configs), else looked up among the
shipped configs, as `gin/<name>` or `<name>`. `include` statements inside
configs resolve the same way (both folders are gin search paths).

Example:

```python
from keras_mtl import configs
configs.parse(["toy_gradnorm_t2.gin"], ["train.steps = 10"])
configs.shipped()[:2]   # ['astmt_nyud_base.gin', 'astmt_nyud_mt_baseline.gin']
```
"""

import difflib
import importlib.resources
import os

import gin

_SEARCH_PATHS_ADDED = set()


def root():
    """The folder holding the shipped `gin/` folder.

    `keras_mtl/` in an installed wheel (configs in `keras_mtl/gin/`), the
    repository root in a checkout or an editable install (`gin/`).
    """
    package = os.fspath(importlib.resources.files("keras_mtl"))
    for candidate in (package, os.path.dirname(package)):
        if os.path.isdir(os.path.join(candidate, "gin")):
            return candidate
    raise FileNotFoundError(
        "The shipped gin configs were not found: expected a `gin/` folder in "
        f"{package!r} (installed package) or in {os.path.dirname(package)!r} "
        "(checkout). Reinstall keras-mtl."
    )


def config_dir():
    """The folder of the shipped `.gin` files."""
    return os.path.join(root(), "gin")


def shipped():
    """Sorted names of the shipped configs (`'toy_gradnorm_t2.gin'`, ...)."""
    return sorted(n for n in os.listdir(config_dir()) if n.endswith(".gin"))


def add_search_paths():
    """Makes gin's `include` find shipped configs as `gin/<name>` and `<name>`.

    Idempotent. The working directory (gin's first search location) keeps
    precedence.
    """
    for path in (root(), config_dir()):
        if path not in _SEARCH_PATHS_ADDED:
            gin.add_config_file_search_path(path)
            _SEARCH_PATHS_ADDED.add(path)


def resolve(path):
    """The file a `--gin_file` value names: itself if it exists, else a shipped config.

    Args:
        path: a path (absolute or relative to the working directory), or a
            shipped config's name, with or without the `gin/` prefix.

    Returns:
        An existing file path.

    Raises:
        FileNotFoundError: neither the path nor a shipped config of that name
            exists; the message lists the closest shipped names.
    """
    if os.path.isfile(path):
        return path
    if not os.path.isabs(path):
        relative = os.path.normpath(path)
        for candidate in (os.path.join(root(), relative),
                          os.path.join(config_dir(), relative)):
            if os.path.isfile(candidate):
                return candidate
    names = shipped()
    close = difflib.get_close_matches(os.path.basename(path), names, n=3)
    hint = f" Closest shipped configs: {close}." if close else ""
    raise FileNotFoundError(
        f"Gin config {path!r} not found. Expected an existing file or the name "
        f"of a shipped config in {config_dir()!r} ({len(names)} configs, e.g. "
        f"'toy_gradnorm_t2.gin').{hint}"
    )


def parse(gin_files, bindings=(), **kwargs):
    """`gin.parse_config_files_and_bindings` with `--gin_file` resolution.

    Args:
        gin_files: config paths or shipped names (see `resolve`).
        bindings: gin binding strings applied after the files.
        **kwargs: passed to `gin.parse_config_files_and_bindings`.
    """
    add_search_paths()
    files = [resolve(f) for f in gin_files]
    return gin.parse_config_files_and_bindings(files, list(bindings), **kwargs)
