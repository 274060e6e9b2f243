"""Fixtures shared by test modules."""

import pytest

from mckd_lab.data.cohort import generate_cohort


@pytest.fixture(scope="session")
def t1_cohort(tmp_path_factory):
    """A generated ADNIMERGE CSV of 120 subjects with baseline T1 volumes of 32^3 (task adni-t1), ~3 s."""
    folder = tmp_path_factory.mktemp("adni_t1")
    return generate_cohort(folder / "ADNIMERGE_t1.csv", subjects=120, seed=3, t1_size=32)
