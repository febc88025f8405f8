"""tfkd: knowledge distillation in TensorFlow/Keras (MetaDistiller, progressive few-shot distillation)."""
from setuptools import find_packages, setup

setup(
    name="tfkd",
    version="0.1.0",
    description="Knowledge distillation for Keras 3 / TensorFlow: multi-exit self-distillation, "
    "MetaDistiller, progressive few-shot distillation.",
    packages=find_packages(include=["tfkd", "tfkd.*"]),
    python_requires=">=3.10",
    # TensorFlow itself comes from an extra: `.[cpu]` (tensorflow-cpu, CI and laptops) or `.[gpu]`
    # (tensorflow[and-cuda]); the two wheels provide the same module and must not be mixed.
    # Compatible ranges (next major excluded); constraints.txt pins the exact versions CI passes on.
    install_requires=[
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9,<5",
        # Not pulled in by TF 2.21 any more, but needed: Keras Tuner imports tensorboard,
        # TFDS needs importlib_resources to build datasets.
        "tensorboard>=2.16,<3",
        "importlib_resources<8",
        "ml-collections>=0.1.1,<2",
        "absl-py>=2.0,<3",
        "numpy>=1.26,<3",
        "h5py>=3.8,<4",
        "keras-tuner>=1.4,<2",
        # bin/visualize (diagnostic figures; t-SNE of few-shot features).
        "matplotlib>=3.7,<4",
        "scikit-learn>=1.3,<2",
        "threadpoolctl>=3,<4",  # scikit-learn's own dependency; tfkd.visualize calls it directly
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.20,<3; platform_machine=='x86_64'", "tensorflow>=2.20,<3; platform_machine!='x86_64'"],
        "gpu": ["tensorflow[and-cuda]>=2.20,<3"],
        "test": ["pytest>=8,<10", "pytest-xdist>=3,<4"],
    },
    scripts=["bin/train", "bin/export", "bin/extract_features", "bin/evaluate", "bin/tune", "bin/visualize"],
)
