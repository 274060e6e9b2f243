"""The trainer: it learns, resumes exactly, keeps the run directory, refuses pickles, stops on NaN."""

import json

import pytest
import torch
from toydata import ToyBalls

from mckd_lab.config import RunConfig
from mckd_lab.tasks import SegmentationTask, split_ids, validate_config
from mckd_lab.train import TrainingDiverged, load_checkpoint, train


def _config(**overrides):
    base = {
        "optim.iterations": 6, "optim.warmup_iterations": 2, "model.channels": [4, 8, 16],
        "data.crop": [16, 16, 16],
        "method.meta_every_warmup": 2, "method.meta_every_missing": 2, "method.meta_batches": 1,
        "method.elect_every": 2, "runtime.progress": False, "runtime.checkpoint_every": 3,
    }  # fmt: skip
    return RunConfig().with_overrides({**base, **overrides})


def _data():
    return {
        "train_data": ToyBalls(cases=6, size=16, seed=0),
        "heldout_data": ToyBalls(cases=2, size=16, seed=1),
    }


def test_run_directory_contract(tmp_path):
    seen = []
    run = train(_config(), tmp_path / "run", callbacks=[seen.append], **_data())
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "history.jsonl", "checkpoint.pt", "model.pt"} <= files
    assert RunConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == _config()
    lines = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert lines == seen == run.history
    train_lines = run.records("train")
    assert [r["iteration"] for r in train_lines] == list(range(6))
    assert [r["stage"] for r in train_lines] == ["warmup"] * 2 + ["missing"] * 4
    assert set(train_lines[0]) == {
        "kind",
        "iteration",
        "stage",
        "lr",
        "loss",
        "loss_task",
        "loss_kd",
        "subset",
        "seconds",
    }
    assert train_lines[0]["subset"] == "flair+t1+t1ce+t2" and train_lines[0]["lr"] == 1e-2
    # two-stage poly: stage 1 (2 iterations) decays over its own length, stage 2 restarts against the 6 in all
    assert train_lines[1]["lr"] == pytest.approx(1e-2 * (1 - 1 / 2) ** 0.9)
    assert train_lines[2]["lr"] == pytest.approx(1e-2 * (1 - 2 / 6) ** 0.9)
    meta = run.records("meta")
    assert [r["iteration"] for r in meta] == [1, 3, 5] and set(meta[0]) == {
        "kind",
        "iteration",
        "omega",
        "importance",
        "meta_loss",
    }
    assert run.iteration == 6 and run.metrics is None and not run.model.training
    assert torch.equal(run.strategy["omega"], torch.tensor(meta[-1]["omega"])) or torch.allclose(
        run.strategy["omega"], torch.tensor(meta[-1]["omega"]), atol=1e-6)  # fmt: skip
    with pytest.raises(FileExistsError, match="resume=True"):
        train(_config(), tmp_path / "run", **_data())


@pytest.mark.parametrize("method", ["mckd", "lckd"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, method):
    config = _config(**{"method.name": method})
    full = train(config, tmp_path / "full", **_data())

    class Interrupt(Exception):
        pass

    def stop_after_4(record):
        if record["kind"] == "train" and record["iteration"] == 4:
            raise Interrupt  # after the checkpoint at iteration 3, with iteration 4's line already written

    with pytest.raises(Interrupt):
        train(config, tmp_path / "resumed", callbacks=[stop_after_4], **_data())
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["iteration"] == 3
    resumed = train(config, tmp_path / "resumed", resume=True, **_data())

    def strip(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert strip(resumed.history) == strip(full.history)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_checkpoint(path)


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    data = _data()
    poisoned = {"on": False}

    class Poison(torch.utils.data.Dataset):
        def __len__(self):
            return len(data["train_data"])

        def __getitem__(self, i):
            item = data["train_data"][i]
            if poisoned["on"]:
                item["image"][:] = float("nan")
            return item

    def poison_after_3(record):
        poisoned["on"] = poisoned["on"] or record.get("iteration") == 3

    with pytest.raises(TrainingDiverged, match="iteration 4: the loss is nan"):
        train(_config(), tmp_path / "run", train_data=Poison(), heldout_data=data["heldout_data"],
              callbacks=[poison_after_3])  # fmt: skip
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["iteration"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_training_with_modalities_missing_from_step_zero_stays_finite(tmp_path):
    """METHOD.md's hazard (the authors' network gives NaN gradients on its first step with a modality
    missing); the reference backbone's own step-0 gradients are checked in test_models.py at 32^3."""
    config = _config(
        **{"optim.warmup_iterations": 0, "method.sampler": "lckd", "method.meta_every_missing": 1}
    )
    run = train(config, tmp_path / "run", **_data())
    assert all(r["subset"] != "flair+t1+t1ce+t2" for r in run.records("train"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in run.records("train"))
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values())


def test_short_training_learns_the_task(tmp_path):
    config = _config(**{"optim.iterations": 60, "optim.warmup_iterations": 30, "model.channels": [8, 16, 32],
                        "method.meta_every_warmup": 20, "method.meta_every_missing": 20,
                        "runtime.checkpoint_every": 60})  # fmt: skip
    run = train(
        config, tmp_path / "run", train_data=ToyBalls(12, 16, seed=0), heldout_data=ToyBalls(2, 16, seed=1)
    )
    test = ToyBalls(6, 16, seed=7)
    batch = {k: torch.stack([test[i][k] for i in range(6)]) for k in ("image", "present", "target")}
    with torch.no_grad():
        dice = SegmentationTask().scores(run.model(batch["image"], batch["present"]).logits, batch["target"])
    # predicting all-tumour scores ~0.2 (WT) / ~0.1 (TC) on these balls, all-background 0. The thin ET shell
    # is not learned in 60 steps (Dice ~0), WT and TC are (measured ~0.80 / ~0.85)
    et, wt, tc = dice.tolist()
    assert wt > 0.7 and tc > 0.6, dice


def test_config_round_trip_and_validation():
    config = _config(**{"method.name": "lckd"})
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown field"):
        RunConfig.from_dict({"optim": {"iters": 3}})
    with pytest.raises(ValueError, match="method.name 'mkcd'"):
        validate_config(_config(**{"method.name": "mkcd"}))
    with pytest.raises(ValueError, match="divisible by 8"):  # the segmentation task's own check
        validate_config(_config(**{"data.crop": [20, 16, 16]}))
    _config(**{"data.crop": [20, 16, 16]}).validate()  # the shared checks alone know nothing of crops


def test_split_ids_is_deterministic_and_disjoint():
    ids = [f"case{i:02d}" for i in range(20)]
    a, b = split_ids(ids, 5, 0.2, seed=0), split_ids(list(reversed(ids)), 5, 0.2, seed=0)
    assert a == b and [len(a[k]) for k in ("test", "heldout", "train")] == [4, 5, 11]
    assert sorted(a["test"] + a["heldout"] + a["train"]) == ids
    with pytest.raises(ValueError, match="heldout_cases"):
        split_ids(ids[:5], 5, 0.2, seed=0)


def test_a_phantom_run_from_disk_resumes_exactly(tmp_path):
    """The real path: phantoms written in the BraTS layout, split, read by the BraTS loader, random crops."""
    config = _config(**{"data.phantom_cases": 5, "data.phantom_size": 32, "data.heldout_cases": 1,
                        "optim.iterations": 4, "runtime.checkpoint_every": 2})  # fmt: skip
    full = train(config, tmp_path / "full")
    splits = json.loads((tmp_path / "full" / "splits.json").read_text())
    assert [len(splits[k]) for k in ("test", "heldout", "train")] == [1, 1, 3]
    assert full.importance is not None and set(full.importance) == {"flair", "t1", "t1ce", "t2"}

    def stop_after_2(record):
        if record["kind"] == "train" and record["iteration"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", callbacks=[stop_after_2])
    resumed = train(config, tmp_path / "resumed", resume=True)
    assert [r["loss"] for r in resumed.records("train")] == [r["loss"] for r in full.records("train")]


def test_a_run_written_before_the_task_protocol_still_loads(tmp_path):
    """config.json of an earlier version: no package version, none of the fields added since; a
    metrics.json without its task. Every field takes its default and the run loads as before."""
    from mckd_lab.runs import load_run, render_table

    run = train(_config(), tmp_path / "run", **_data())
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    assert old.pop("mckd_lab_version")
    for section, field in (
        ("data", "phantom_redundancy"),
        ("method", "meta_batch_size"),
        ("method", "omega_init"),
    ):
        del old[section][field]
    path.write_text(json.dumps(old))
    loaded = load_run(tmp_path / "run")
    assert loaded.config == run.config and loaded.iteration == 6 and loaded.task.name == "brats"
    for a, b in zip(loaded.model.state_dict().values(), run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    table = {
        "protocol": {},
        "regions": ["ET"],
        "modalities": ["flair"],
        "subsets": [],
        "mean": {"dice": {"ET": 0.5}},
    }
    assert "| **mean of 0** | 50.00 |" in render_table(table)  # no "task": a BraTS table
