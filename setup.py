"""Installs tfr_ssl: two-tower retrieval with logQ correction and SSL."""

import setuptools

setuptools.setup(
    name="tfr_ssl",
    version="0.1.0",
    description=(
        "Two-tower retrieval in TensorFlow Recommenders with sampling-bias "
        "correction and self-supervised item-tower learning."
    ),
    packages=setuptools.find_packages(include=["tfr_ssl*", "pipelines*"]),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "tensorflow==2.20.*",
        "tf-keras==2.20.*",
        "tensorflow-recommenders==0.7.7",
        "scann[tf]==1.4.2",
        "tensorflow-datasets>=4.9,<5",
        "absl-py>=2.1",
        "numpy>=1.26",
        "matplotlib>=3.8",
        # The HTTP retrieval service (pipelines.serve).
        "aiohttp>=3.14,<3.15",
    ],
    extras_require={
        # pytest-xdist: `make test` runs the suite on 2 worker processes
        # (3.8 added --no-loadscope-reorder, which the Makefile passes).
        "dev": ["pytest>=8", "pytest-xdist>=3.8", "ruff>=0.6"],
    },
)
