"""mckd-lab: learning with missing modalities through MCKD (meta-learned cross-modal knowledge distillation).

The library in layers; a module imports only from layers below its own (``tests/test_architecture.py``):

- L0  ``config`` (RunConfig), ``rundir`` (run-directory layout, atomic writes, checkpoints, history, the lock),
      ``distributed`` (the process group torchrun starts, DDP), ``slowdown`` (a run that crawls says so),
      ``data.cards`` (the data cards), ``data.missing`` (subsets, samplers, the one ``restrict_present`` rule)
- L1  ``data`` (BraTS and ADNI loaders, phantoms, cohort, anatomy), ``method`` (importance weights, KD, meta
      step, strategies), ``models`` (networks: encode, fill, decode), ``losses``
- L2  ``metrics``, ``infer`` (encode-once subset prediction, sliding windows), ``explain`` (attributions),
      ``study`` (the testbeds' ground truth, feature distance, paired statistics)
- L3  ``tasks`` (the Task protocol; ``segmentation``, ``classification``; the registry): all that differs
      between problems
- L4  ``runs`` (a run read back; evaluate, predict, explain it through its task), ``train`` (the one
      trainer), ``evaluate``
- L5  ``recipes`` (notebook helpers), ``tutorials``, ``clusters`` (the Dask clusters sweeps run on),
      ``experiments`` (papermill, sweeps), ``demo``, ``cli``

``widgets`` (outside the package) builds views on L0-L4; nothing here imports it, Jupyter or plotly.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version is pyproject.toml's, read from the installed package's metadata
    __version__ = version("mckd-lab")
except PackageNotFoundError:  # a source tree imported without installing it
    __version__ = "0+unknown"
