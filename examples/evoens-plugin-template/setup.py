"""A template for a third-party evoens plugin: copy this folder, rename, pip install -e ."""

from setuptools import setup

setup(
    name="evoens-plugin-template",
    version="0.1.0",
    description="Example evoens plugin: a margin fitness and a per-generation reporter",
    packages=["evoens_template"],
    python_requires=">=3.10",
    install_requires=["evoens"],
    # The whole registration: evoens finds the module through this entry-point group.
    entry_points={"evoens": ["template = evoens_template"]},
)
