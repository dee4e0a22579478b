"""One distribution, ``evoens``: the core package, every built-in plugin package and the
benchmark suites (``benchmarks/evoens_benchmarks``, installed by default as the plugin ``benchmarks``).

Built-in plugins are registered in the entry-point group ``evoens`` exactly as a third-party
plugin would be (see examples/evoens-plugin-template/setup.py for one).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = next(
    line.split('"')[1] for line in (HERE / "evoens" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

PLUGIN_PACKAGES = find_packages(where="plugins", include=["evoens_*", "evoens_*.*"])
BENCH_PACKAGES = find_packages(where="benchmarks", include=["evoens_benchmarks", "evoens_benchmarks.*"])

setup(
    name="evoens",
    version=VERSION,
    description="Plugin-based neuroevolution and meta-learning for PyTorch: batched populations on EvoTorch",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["evoens", "evoens.*"]) + PLUGIN_PACKAGES + BENCH_PACKAGES,
    # plugins/evoens_x/ installs as the top-level package evoens_x (never a package "plugins"),
    # benchmarks/evoens_benchmarks/ as evoens_benchmarks
    package_dir={
        **{name: f"plugins/{name}" for name in PLUGIN_PACKAGES if "." not in name},
        **{name: f"benchmarks/{name}" for name in BENCH_PACKAGES if "." not in name},
    },
    install_requires=[
        "torch>=2.2",
        "evotorch>=0.6,<0.7",
        "pluggy>=1.5",
        "numpy>=1.24",
        "scipy>=1.10",
        "tensorboardX>=2.6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "mnist1d>=0.0.2",
        'tomli>=2.0; python_version < "3.11"',
    ],
    extras_require={
        "dev": ["pytest>=8", "tox>=4", "ruff", "setuptools>=68", "wheel"],
        "viz": ["tensorboard"],
        # trainer.num_actors > 0 (evoens.distributed); EvoTorch 0.6 pulls Ray in itself, but evoens
        # does not rely on that: the default test environments skip what needs it
        "ray": ["ray>=2.9"],
    },
    entry_points={
        "console_scripts": ["evoens = evoens.cli:main"],
        "evoens": [
            "core = evoens.builtins.core",
            "searchers = evoens.builtins.searchers",
            "reporters = evoens.builtins.reporters",
            "checkpoint = evoens.builtins.checkpointing",
            "watchdog = evoens.builtins.watchdog",
            "loop = evoens.engine",
            "binary = evoens_binary.hooks",
            "morph = evoens_morph.hooks",
            "ensemble = evoens_ensemble.hooks",
            "sizing = evoens_sizing.hooks",
            "hypernet = evoens_hypernet.hooks",
            "benchmarks = evoens_benchmarks.hooks",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
