"""Notebook helpers (``mckd_lab.recipes``): each recipe's config, the run folder prepared once, reuse."""

import json

import pytest
from toydata import ToyBalls

from mckd_lab.config import RunConfig
from mckd_lab.recipes import (
    adni_config,
    brats_config,
    load_or_train,
    prepare_run,
    split_cases,
    train_or_reuse,
)
from mckd_lab.rundir import RUN_FILES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_brats_config_sizes_the_run_from_the_notebooks_parameters():
    config = brats_config(None, method="uniform", iterations=60, seed=4, cases=10, size=32)
    d, me, o = config.data, config.method, config.optim
    assert (d.task, d.root, d.phantom_cases, d.phantom_size, d.crop) == ("brats", None, 10, 32, (32, 32, 32))
    assert (d.heldout_cases, d.test_fraction) == (2, 0.25)
    assert (me.name, me.meta_every_warmup, me.meta_every_missing, me.elect_every) == ("uniform", 3, 3, 12)
    assert (o.iterations, o.warmup_iterations, config.runtime.seed) == (
        60,
        20,
        4,
    )  # a third keeps every modality
    assert brats_config("/data/brats", **{"optim.lr": 3e-3}).data.root == "/data/brats"
    with pytest.raises(ValueError, match="divisible by 8"):
        brats_config(size=36)
    with pytest.raises(ValueError, match="override .epochs."):
        brats_config(epochs=3)  # an ADNI option


def test_adni_config_counts_epochs_in_iterations():
    config = adni_config(None, method="lckd", epochs=2, subjects=200, batch_size=40)
    assert config.data.task == "adni" and config.method.name == "lckd"
    assert config.optim.iterations == 2 * 3 and config.optim.warmup_iterations == 2  # 120 training subjects
    assert adni_config(task="adni-t1", epochs=1).optim.lr == 3e-3  # the volume encoder's rate


def test_prepare_run_generates_the_data_once_and_clears_another_config(tmp_path, capsys):
    config = brats_config(cases=6, size=32)
    folder = prepare_run(config, tmp_path / "run")
    assert folder == tmp_path / "run" / "phantoms" and len(list(folder.glob("HGG/*/*_seg.nii.gz"))) == 6
    stamp = (folder / "phantoms.json").stat().st_mtime_ns
    assert (
        prepare_run(config, tmp_path / "run") == folder
        and (folder / "phantoms.json").stat().st_mtime_ns == stamp
    )
    # a run of another configuration found there is removed, and said so; the data too when it changed
    (tmp_path / "run" / "config.json").write_text(
        json.dumps(brats_config(cases=6, size=32, seed=9).to_dict())
    )
    (tmp_path / "run" / "history.jsonl").write_text("{}\n")
    prepare_run(config, tmp_path / "run")
    assert not any((tmp_path / "run" / name).exists() for name in RUN_FILES)
    assert "another configuration" in capsys.readouterr().err
    assert (folder / "phantoms.json").stat().st_mtime_ns == stamp  # same data section: the phantoms stay
    (tmp_path / "run" / "config.json").write_text(json.dumps(brats_config(cases=8, size=32).to_dict()))
    prepare_run(config, tmp_path / "run")
    assert (folder / "phantoms.json").stat().st_mtime_ns != stamp  # other phantoms asked: made again


def test_train_or_reuse_reuses_the_same_config_and_restarts_another(tmp_path, capsys):
    data = {"train_data": ToyBalls(cases=4, size=16), "heldout_data": ToyBalls(cases=2, size=16, seed=1)}
    small = {"data.crop": [16, 16, 16], "optim.iterations": 2, "optim.warmup_iterations": 1}
    config = RunConfig().with_overrides(small | {"runtime.progress": False})
    run = train_or_reuse(config, tmp_path / "run", **data)
    assert len(run.records("train")) == 2 and (tmp_path / "run" / "model.pt").is_file()
    stamp = (tmp_path / "run" / "history.jsonl").stat().st_mtime_ns
    again = train_or_reuse(config, tmp_path / "run", **data)  # same config: nothing trains
    assert (tmp_path / "run" / "history.jsonl").stat().st_mtime_ns == stamp and again.iteration == 2
    longer = train_or_reuse(config.with_overrides({"optim.iterations": 3}), tmp_path / "run", **data)
    assert len(longer.records("train")) == 3 and "another configuration" in capsys.readouterr().err


def test_load_or_train_trains_once_where_notebook_one_will_find_it(tmp_path):
    config = brats_config(
        cases=6, size=32, iterations=2, **{"model.channels": [4, 8], "runtime.progress": False}
    )
    first = load_or_train(tmp_path / "01", config)
    assert first.iteration == 2 and (tmp_path / "01" / "model.pt").is_file()
    stamp = (tmp_path / "01" / "model.pt").stat().st_mtime_ns
    again = load_or_train(tmp_path / "01", config.with_overrides({"optim.iterations": 5}))  # finished: reused
    assert again.iteration == 2 and (tmp_path / "01" / "model.pt").stat().st_mtime_ns == stamp
    test = split_cases(again, "test")
    assert [c.case_id for c in test] == json.loads((tmp_path / "01" / "splits.json").read_text())["test"]
    assert all(c.image.shape[0] == 4 for c in test)
