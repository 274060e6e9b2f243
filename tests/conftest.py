"""Fixtures shared by test modules."""

import pytest
import torch

from mckd_lab.data.cohort import generate_cohort


@pytest.fixture(scope="module")
def one_thread():
    """Small models: one thread is ~20x faster than two on a busy shared CPU (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def t1_cohort(tmp_path_factory):
    """A generated ADNIMERGE CSV of 120 subjects with baseline T1 volumes of 32^3 (task adni-t1), ~3 s."""
    folder = tmp_path_factory.mktemp("adni_t1")
    return generate_cohort(folder / "ADNIMERGE_t1.csv", subjects=120, seed=3, t1_size=32)


@pytest.fixture(scope="session")
def adni_cohort(tmp_path_factory):
    """A generated ADNIMERGE CSV of 300 subjects (seed 3), shared by every test that trains on ADNI."""
    return generate_cohort(tmp_path_factory.mktemp("adni_cohort") / "ADNIMERGE_task.csv", subjects=300, seed=3)
