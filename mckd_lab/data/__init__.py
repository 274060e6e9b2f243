"""Data: cards, loaders (BraTS, ADNI), synthetic generators (phantoms, cohort) and modality masks."""
