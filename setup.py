"""Package layout only (metadata is in pyproject.toml).

Everything installs under the one name ``fedopt``: the repository keeps its top-level folders
``server/``, ``client/``, ``protocols/`` and ``simulations/``, installed as ``fedopt.server``,
``fedopt.client``, ... so a wheel adds no top-level packages that collide with other projects.
pyproject.toml cannot combine package discovery with a renaming map, hence this file.
"""
from setuptools import find_packages, setup

MAPPED = ("server", "client", "protocols", "simulations")

packages = find_packages(include=["fedopt", "fedopt.*"])
package_dir = {}
for top in MAPPED:
    package_dir[f"fedopt.{top}"] = top
    packages += [f"fedopt.{name}" for name in find_packages(include=[top, f"{top}.*"])]

setup(packages=packages, package_dir=package_dir)
