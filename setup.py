"""keras-mtl: multi-task learning for Keras 3 / TensorFlow."""
from setuptools import find_packages, setup

setup(
    name="keras-mtl",
    version="0.1.0",
    description=(
        "Multi-task learning for Keras 3 / TensorFlow: GradNorm, IMTL, "
        "Maximum Roaming, attentive single-tasking and their baselines."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_mtl", "keras_mtl.*", "launch", "launch.*"])
    + ["keras_mtl.gin"],
    # The experiment configs: the checkout's top-level gin/ folder ships as
    # keras_mtl/gin/ (found by keras_mtl.configs from any working directory).
    package_dir={"keras_mtl.gin": "gin"},
    package_data={"keras_mtl.gin": ["*.gin"]},
    entry_points={
        "console_scripts": [
            f"keras-mtl-{name}=launch.cli:{name}"
            for name in ("train", "evaluate", "export", "benchmark", "demo", "compare")
        ],
    },
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.3",
        "tensorflow-datasets>=4.9",
        "keras-cv>=0.9",
        "gin-config>=0.5",
        "absl-py>=1.0",
        "numpy>=1.24",
        "matplotlib>=3.7",
        "tensorboard>=2.16",
        "scikit-learn>=1.2",
        # tensorflow-datasets' builders (tfds `celeb_a`, through etils.epath)
        # import it without declaring it; keras-mtl itself uses the stdlib
        # importlib.resources.
        "importlib_resources>=5.0",
    ],
    # TensorFlow comes as an extra so that a GPU user's `tensorflow[and-cuda]`
    # is not shadowed by a second, CPU-only distribution: pick one.
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "test": ["pytest>=7", "pytest-xdist>=3"],
    },
)
