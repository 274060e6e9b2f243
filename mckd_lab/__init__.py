"""mckd-lab: learning with missing modalities through MCKD (meta-learned cross-modal knowledge distillation)."""

__version__ = "0.1.0"
