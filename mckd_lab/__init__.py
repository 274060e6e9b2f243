"""mckd-lab: learning with missing modalities through MCKD (meta-learned cross-modal knowledge distillation)."""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version is pyproject.toml's, read from the installed package's metadata
    __version__ = version("mckd-lab")
except PackageNotFoundError:  # a source tree imported without installing it
    __version__ = "0+unknown"
