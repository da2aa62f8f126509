"""The arithmetic of benchmarks/quality.py: FPI to reach a sensitivity, time to quality, seed intervals."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import quality  # noqa: E402


def test_fpi_to_reach_reads_the_first_point_of_the_curve_at_the_target():
    curve = [{"fpi": 0.1, "sensitivity": 0.5}, {"fpi": 1.0, "sensitivity": 0.95}, {"fpi": 3.0, "sensitivity": 0.97},
             {"fpi": 9.0, "sensitivity": 0.97}]
    assert quality.fpi_to_reach(curve, 0.95) == 1.0
    assert quality.fpi_to_reach(curve, 0.97) == 3.0
    assert quality.fpi_to_reach(curve, 0.99) is None


def test_time_to_quality_counts_epoch_seconds_until_the_first_crossing():
    history = [{"epoch_seconds": "60", "val_sensitivity_at_4.8": "0.5"},
               {"epoch_seconds": "60", "val_sensitivity_at_4.8": "0.85"},
               {"epoch_seconds": "120", "val_sensitivity_at_4.8": "0.7"},
               {"epoch_seconds": "60", "val_sensitivity_at_4.8": "0.9"}]
    assert quality.time_to_quality(history) == {"0.8": 2.0, "0.9": 5.0}
    assert quality.time_to_quality(history[:1]) == {"0.8": None, "0.9": None}


def test_mean_ci_is_a_t_interval_across_seeds():
    mean, half = quality.mean_ci([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and half == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
    assert quality.mean_ci([0.7]) == (0.7, None) and quality.mean_ci([]) == (None, None)


def _probe_train_config(flags: list[str]):
    """The `TrainConfig` a val probe's run gets: the main table's budget and seed 0, then `flags`."""
    import argparse

    from keras_hourglass.cli import train as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = quality.parse_args(["main"])
    return cli.build_config(parser.parse_args(["train", "--data", "P", "--out", "R",
                                               *quality.train_flags(args, [], 0), *flags]))


def test_every_variant_is_a_valid_hourglass_train_command():
    import argparse

    from keras_hourglass.cli import train as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = quality.parse_args(["main"])
    for table in quality.TABLES.values():
        for _, flags in table.values():
            argv = ["train", "--data", "P", "--out", "R", *quality.train_flags(args, flags, 0)]
            config = cli.build_config(parser.parse_args(argv))
            assert config.phases() == [("patch", 12), ("full", 4)] and config.steps_per_epoch == 100


def test_recipe_fingerprint_follows_code_not_docstrings(tmp_path):
    def write(body: str) -> str:
        for source in quality.RECIPE_SOURCES:
            path = tmp_path / source
            if source.endswith(".py"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("x = 1\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "keras_hourglass/model/net.py").write_text(body)
        return quality.recipe_fingerprint(str(tmp_path))

    base = write('"""Doc."""\ndef f():\n    """Old words."""\n    return 1  # a comment\n')
    assert write('"""Other doc."""\ndef f():\n    """New words."""\n    return 1\n') == base
    assert write('"""Doc."""\ndef f():\n    """Old words."""\n    return 2\n') != base


def test_probe_numbers_ignore_clocks_and_see_every_score(tmp_path):
    run, ev = tmp_path / "run", tmp_path / "eval"
    run.mkdir()
    ev.mkdir()

    def numbers(seconds: str, score: str) -> str:
        (run / "history.csv").write_text(f"epoch,phase,epoch_seconds,loss\n1,patch,{seconds},0.5\n")
        (ev / "marks.csv").write_text(f"image,score\na,{score}\n")
        (ev / "froc.json").write_text('{"curve": [{"fpi": 0.0, "sensitivity": 1.0}], "settings": {"t": 1}}')
        return quality._probe_numbers(str(run), str(ev))

    assert numbers("12.5", "0.25") == numbers("99.0", "0.25")  # a slower machine: the same behaviour
    assert numbers("12.5", "0.25") != numbers("12.5", "0.2500001")  # one score moved: another behaviour


def write_cached_behaviour(out, prep, flags, recipe, behaviour, threads=None) -> None:
    data_hash = quality.read_json(os.path.join(prep, "manifest.json"))["content_hash"]
    path = os.path.join(out, "behaviour", f"{recipe}-{quality._probe_key(flags, data_hash, threads)}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    quality.write_json(path, {"behaviour": behaviour})


def test_a_run_of_other_code_is_kept_only_when_that_code_behaved_the_same(tmp_path, monkeypatch):
    out, prep = str(tmp_path), str(tmp_path / "prep")
    os.makedirs(prep)
    quality.write_json(os.path.join(prep, "manifest.json"), {"content_hash": "data1"})
    args = quality.parse_args(["main", "--seeds", "0"])
    flags = ["--loss", "l2"]
    monkeypatch.setattr(quality, "recipe_fingerprint", lambda root=quality.ROOT: "newcode")
    write_cached_behaviour(out, prep, flags, "newcode", "B1")  # this code's probes: cached, so nothing runs
    write_cached_behaviour(out, prep, flags, "newcode", "B1-one-thread", threads=1)  # a new run's (--threads 1)
    record_path = tmp_path / "runs" / "main" / "l2-s0.record.json"
    record_path.parent.mkdir(parents=True)
    old = {"train_flags": quality.train_flags(args, flags, 0), "data_hash": "data1", "recipe": "oldcode"}
    record_path.write_text(quality.json.dumps(old))
    trained = []
    threads = []
    monkeypatch.setattr(quality, "run", lambda cmd, log, timeout, n=None: trained.append(cmd) or threads.append(n)
                        or ("", 0.0))
    with pytest.raises(FileNotFoundError):  # the old code was never probed: stale, so it trains (stubbed)
        quality.run_one(args, out, "main", "l2", prep, flags, 0, "L2")
    assert trained and not os.path.exists(tmp_path / "runs" / "main" / "l2-s0")
    assert threads == [1, 1]  # trained and scored with --threads (default 1)
    assert quality.read_json(str(tmp_path / "runs" / "main" / "l2-s0.stamp.json"))["behaviour"] == "B1-one-thread"
    trained.clear()
    record_path.write_text(quality.json.dumps(old))
    write_cached_behaviour(out, prep, flags, "oldcode", "B1")  # probed: it behaves as this code does
    kept = quality.run_one(args, out, "main", "l2", prep, flags, 0, "L2")
    assert not trained and kept["behaviour"] == "B1" and quality.read_json(str(record_path))["behaviour"] == "B1"
    write_cached_behaviour(out, prep, flags, "oldcode", "B0")
    record_path.write_text(quality.json.dumps(old))
    with pytest.raises(FileNotFoundError):  # it behaved otherwise: redone
        quality.run_one(args, out, "main", "l2", prep, flags, 0, "L2")
    assert trained


def test_recenter_diagnosis_hand_computed():
    """benchmarks/recenter_diagnosis.py: where the centre of mass of a detector patch lies."""
    np = pytest.importorskip("numpy")
    import recenter_diagnosis

    box = (8.0, 8.0, 12.0, 12.0)  # centre (10, 10), half-size 2; patch 12 -> pixels 4..15
    heatmap = np.zeros((20, 20))
    heatmap[10, 10] = 1.0  # pixel centre (10.5, 10.5): 0.707 px from the box centre
    stats = recenter_diagnosis.box_statistics(heatmap, box, 12)
    assert stats["com_inside_box"] and stats["patch_peak_inside_box"]
    assert stats["com_distance"] == pytest.approx(np.hypot(0.5, 0.5) / 2.0)
    assert stats["patch_mass_inside_box"] == 1.0
    heatmap[10, 14] = 3.0  # a stronger response beside the box, inside the patch
    stats = recenter_diagnosis.box_statistics(heatmap, box, 12)
    assert not stats["com_inside_box"] and not stats["patch_peak_inside_box"]
    assert stats["patch_mass_inside_box"] == pytest.approx(0.25)
    heatmap[:] = 0.0
    heatmap[10, 16] = 1.0  # outside the patch: no mass, no measurement
    assert recenter_diagnosis.box_statistics(heatmap, box, 12) is None


def test_miss_diagnosis_hand_computed():
    """benchmarks/miss_diagnosis.py: best value inside a box, and where a false mark lies."""
    np = pytest.importorskip("numpy")
    import miss_diagnosis

    heatmap = np.zeros((10, 10))
    heatmap[2, 3] = 0.7  # cell (2, 3) covers image px y 8..12, x 12..16 at stride 4
    heatmap[8, 8] = 0.9
    boxes = [(8.0, 12.0, 11.0, 15.0), (0.0, 0.0, 4.0, 4.0), (30.0, 30.0, 36.0, 36.0)]
    assert miss_diagnosis.best_in_boxes(heatmap, boxes, 4) == [0.7, 0.0, 0.9]
    assert np.isnan(miss_diagnosis.best_in_boxes(heatmap, [(50.0, 50.0, 60.0, 60.0)], 4)[0])

    mask = np.zeros((10, 10), bool)
    mask[:, :6] = True  # breast on the left 6 cells (24 px)
    labels = ("benign", "malignant")
    two = [(10.0, 10.0, 14.0, 14.0), (20.0, 10.0, 24.0, 14.0)]
    place = lambda y, x: miss_diagnosis.place_of_mark(y, x, two, labels, mask, 4, 40, 40)
    assert place(12.0, 12.0) == "on_benign"
    assert place(3.0, 12.0) == "image_border"
    assert place(20.0, 18.0) == "breast_edge"  # cell column 4: within 2 cells of column 6
    assert place(30.0, 10.0) == "tissue"  # cell (7, 2): the window is all breast
    assert place(22.0, 12.0) == "tissue"  # on a malignant box but a false mark: no benign/high-risk place


def test_tuned_table_searches_each_loss_with_the_same_budget_as_a_valid_tune_command(tmp_path):
    import argparse
    import json

    import quality_tuned

    from tuning import cli

    args = quality.parse_args(["tuned"])
    assert args.variants == ["hypersensitive", "l2", "focal"] and args.max_trials == quality_tuned.DEFAULT_TRIALS == 6
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    budgets = set()
    for loss in args.variants:
        parsed = parser.parse_args(["tune", "--data", "P", "--out", "T", *quality_tuned.tune_flags(args, loss)])
        cli._resolve_epochs(parsed)
        assert parsed.loss == loss and (parsed.patch_epochs, parsed.full_epochs, parsed.epochs) == (12, 4, 16)
        budgets.add((parsed.max_trials, parsed.steps_per_epoch, parsed.batch_size, parsed.val_images, parsed.seed))
    assert budgets == {(6, 100, 8, 64, 0)}  # tuned against tuned: one trial budget for every loss

    best = tmp_path / "best_hyperparameters.json"
    best.write_text(json.dumps({"values": {"loss": "l2", "target_sigma": 9.5, "learning_rate": 0.002}}))
    first = quality_tuned.best_values_file(str(tmp_path), "l2", str(best))
    assert quality_tuned.best_values_file(str(tmp_path), "l2", str(best)) == first  # same values: same runs
    best.write_text(json.dumps({"values": {"loss": "l2", "target_sigma": 12.0, "learning_rate": 0.002}}))
    assert quality_tuned.best_values_file(str(tmp_path), "l2", str(best)) != first  # a new best: retrained
    assert quality_tuned.describe({"loss": "l2", "target_sigma": 9.5, "learning_rate": 0.002, "preset": "tiny"}) == (
        "learning_rate 0.002, target_sigma 9.5")


def test_the_same_run_in_another_table_is_reused_not_trained_twice(tmp_path, monkeypatch):
    out, prep = str(tmp_path), str(tmp_path / "prep")
    os.makedirs(prep)
    quality.write_json(os.path.join(prep, "manifest.json"), {"content_hash": "data1"})
    monkeypatch.setattr(quality, "recipe_fingerprint", lambda root=quality.ROOT: "code")
    flags = ["--loss", "hypersensitive"]
    write_cached_behaviour(out, prep, flags, "code", "B1")
    trained = []
    monkeypatch.setattr(quality, "run", lambda cmd, log, timeout, threads=None: trained.append(cmd) or ("", 0.0))
    main_args, stress_args = quality.parse_args(["main", "--seeds", "0"]), quality.parse_args(["stress", "--seeds", "0"])
    main_record = {"table": "main", "name": "hypersensitive", "seed": 0, "train_flags": quality.train_flags(
        main_args, flags, 0), "data_hash": "data1", "behaviour": "B1", "summary": {"sensitivity_at_fpi": {"4.8": 0.5}}}
    quality.write_json(os.path.join(out, "runs", "main", "hypersensitive-s0.record.json"), main_record)

    # the stress table's base setting: the main table's data, flags and behaviour -> main's record, kept as it was
    # made (TensorFlow's default threads: its record has no thread count) though new runs use --threads 1
    record = quality.run_one(stress_args, out, "stress", "boxes-base-hypersensitive", prep, flags, 0, "HS")
    assert not trained and record["reused_from"] == os.path.join("runs", "main", "hypersensitive-s0.record.json")
    assert record["table"] == "stress" and record["summary"] == main_record["summary"]
    # the ablation's "(a) off" row is the main table's default loss: the same flags
    assert quality.TABLES["ablation"]["no-recenter"][1] == quality.TABLES["main"]["hypersensitive"][1]

    # another checkpoint, other data or another behaviour is another run: trained (stubbed: no outputs)
    for kwargs, behaviour, data in (({"checkpoint": quality.BEST_CHECKPOINT}, "B1", "data1"), ({}, "B2", "data1"),
                                    ({}, "B1", "data2")):
        trained.clear()
        write_cached_behaviour(out, prep, flags, "code", behaviour)
        quality.write_json(os.path.join(prep, "manifest.json"), {"content_hash": data})
        for threads in (None, 1):
            write_cached_behaviour(out, prep, flags, "code", behaviour, threads=threads)
        with pytest.raises(FileNotFoundError):
            quality.run_one(main_args, out, "tuned", "hypersensitive", prep, flags, 0, "HS", **kwargs)
        assert trained and "--loss" in trained[0]
        assert trained[1][trained[1].index("--model") + 1].endswith(kwargs.get("checkpoint", "model.keras"))


def test_stress_summary_pairs_the_losses_by_seed():
    def record(seed, at_48, peak):
        return {"seed": seed, "summary": {"sensitivity_at_fpi": {"4.8": at_48}, "max_sensitivity": peak,
                                          "num_malignant_findings": 70}}

    groups = {"subtlety: contrast-0.5": {"hypersensitive": [record(0, 0.6, 0.9), record(1, 0.5, 1.0)],
                                         "l2": [record(0, 0.4, 0.95), record(1, 0.4, 0.95), record(2, 0.9, 0.9)]},
              "boxes (a): loose": {"hypersensitive": [record(0, 0.5, 0.9)], "l2": []}}
    table = quality.stress_summary(groups).splitlines()
    assert len(table) == 3  # header, rule, one setting: the other has no L2 run to pair with
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:3] == ["subtlety: contrast-0.5", "70", "0,1"]  # L2's seed 2 has no hypersensitive partner
    assert cells[5].startswith("0.150 ± ") and cells[4].startswith("0.400")  # (0.2 + 0.1) / 2, paired
    assert cells[8].startswith("0.000 ± ")  # max: (-0.05 + 0.05) / 2
    assert quality.stress_summary({"g": {"hypersensitive": [], "l2": []}}) == ""
    same = {"g": {"hypersensitive": [record(0, 0.6, 0.9), record(1, 0.5, 0.9)],
                  "l2": [record(0, 0.4, 0.9), record(1, 0.3, 0.9)]}}
    cells = [c.strip() for c in quality.stress_summary(same).splitlines()[2].strip("|").split("|")]
    assert cells[5] == "0.200 ± 0.000" and cells[8] == "0.000 ± 0.000"  # seeds agree: a zero-width interval


def test_runs_in_parallel_keep_table_order_and_raise_after_all_ended():
    import time

    started, ended = [], []

    def task(i, fail=False):
        def work():
            started.append(i)
            time.sleep(0.05 * (3 - i))
            ended.append(i)
            if fail:
                raise SystemExit(f"run {i} failed")
            return i
        return work

    assert quality.in_parallel([task(0), task(1), task(2)], jobs=2) == [0, 1, 2]  # results in table order
    assert quality.in_parallel([task(0), task(1)], jobs=1) == [0, 1]
    ended.clear()
    with pytest.raises(SystemExit, match="run 0 failed"):
        quality.in_parallel([task(0, fail=True), task(1), task(2)], jobs=2)
    assert sorted(ended) == [0, 1, 2]  # siblings ran to their end
    args = quality.parse_args(["main", "--threads", "1"])
    assert args.jobs == max(1, os.cpu_count() or 1) and quality.thread_env(1) == {
        "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    assert quality.parse_args(["main", "--threads", "0"]).threads is None and quality.thread_env(None) == {}


def test_a_search_resumes_with_its_own_thread_count_and_a_stale_one_starts_over(tmp_path, monkeypatch):
    import quality_tuned

    out, prep = str(tmp_path), str(tmp_path / "prep")
    os.makedirs(prep)
    quality.write_json(os.path.join(prep, "manifest.json"), {"content_hash": "data1"})
    args = quality.parse_args(["tuned"])  # --threads 1 by default
    flags = quality_tuned.tune_flags(args, "l2")
    behaviours = {None: "B-default", 1: "B-one"}
    monkeypatch.setattr(quality, "behaviour_fingerprint", lambda out, prep, flags, threads=None, **kw: behaviours[threads])
    ran = []
    monkeypatch.setattr(quality, "run", lambda cmd, log, timeout, threads=None: ran.append(threads) or ("", 0.0))
    base = tmp_path / "runs" / "tuned"
    (base / "l2-search").mkdir(parents=True)
    (base / "l2-search" / "trial_00").mkdir()
    stamp = {"tune_flags": flags, "data_hash": "data1", "behaviour": "B-default"}  # made with TF's default threads
    quality.write_json(str(base / "l2-search.stamp.json"), stamp)
    assert quality_tuned.run_search(args, out, prep, "l2") is None  # no best trial yet (tune stubbed)
    assert ran == [None] and (base / "l2-search" / "trial_00").exists()  # resumed with its own threads
    assert quality.read_json(str(base / "l2-search.stamp.json")) == stamp
    behaviours[None] = "B-changed"  # the code now behaves otherwise: started over, with --threads
    ran.clear()
    quality_tuned.run_search(args, out, prep, "l2")
    assert ran == [1] and not (base / "l2-search" / "trial_00").exists()
    assert quality.read_json(str(base / "l2-search.stamp.json"))["threads"] == 1


def test_in_parallel_after_keeps_dependencies_the_job_limit_and_list_priority():
    import threading
    import time

    log, running, peak, lock = [], [0], [0], threading.Lock()

    def task(name, seconds=0.05):
        def run():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                log.append(("start", name))
            time.sleep(seconds)
            with lock:
                running[0] -= 1
                log.append(("end", name))
            return name
        return run

    # 0-2 are "searches" (ready at once); 3 waits for 0, 4 for 1
    tasks = [task("s0", 0.1), task("s1", 0.3), task("s2"), task("r0"), task("r1")]
    results = quality.in_parallel_after(tasks, {3: [0], 4: [1]}, jobs=2)
    assert results == ["s0", "s1", "s2", "r0", "r1"] and peak[0] == 2
    assert log.index(("end", "s0")) < log.index(("start", "r0"))
    assert log.index(("end", "s1")) < log.index(("start", "r1"))
    assert log.index(("start", "s2")) < log.index(("start", "r0"))  # of the ready tasks, the earliest listed

    def fails():
        raise RuntimeError("search broke")

    with pytest.raises(RuntimeError, match="search broke"):
        quality.in_parallel_after([fails, task("after")], {1: [0]}, jobs=2)


def test_a_larger_max_trials_extends_a_search_and_another_flag_starts_it_over(tmp_path, monkeypatch):
    import quality_tuned

    out, prep = str(tmp_path), str(tmp_path / "prep")
    os.makedirs(prep)
    quality.write_json(os.path.join(prep, "manifest.json"), {"content_hash": "data1"})
    monkeypatch.setattr(quality, "behaviour_fingerprint", lambda out, prep, flags, threads=None, **kw: "B")
    ran = []
    monkeypatch.setattr(quality, "run", lambda cmd, log, timeout, threads=None: ran.append(cmd) or ("", 0.0))
    base = tmp_path / "runs" / "tuned"
    trial = base / "l2-search" / "trial_00"
    first = quality.parse_args(["tuned"])
    assert first.max_trials == quality_tuned.DEFAULT_TRIALS
    quality_tuned.run_search(first, out, prep, "l2")
    trial.mkdir(parents=True)  # a finished trial of the first search
    quality_tuned.run_search(quality.parse_args(["tuned", "--max-trials", "12"]), out, prep, "l2")
    assert trial.exists()  # extended, not started over
    assert ran[-1][ran[-1].index("--max-trials") + 1] == "12"
    assert quality.read_json(str(base / "l2-search.stamp.json"))["tune_flags"][
        quality_tuned.tune_flags(first, "l2").index("--max-trials") + 1] == "12"
    quality_tuned.run_search(quality.parse_args(["tuned", "--max-trials", "12", "--steps-per-epoch", "50"]),
                             out, prep, "l2")
    assert not trial.exists()  # another budget per trial: another search


def test_the_committed_table_keeps_its_hand_written_paragraph(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "HERE", str(tmp_path))
    path = quality.write_committed_table("stress", "`stress` table", "| a |\n")
    first = open(path, encoding="utf-8").read()
    assert first.startswith("## Detection quality: `stress` table") and "| a |" in first
    with open(path, "w", encoding="utf-8") as handle:  # a maintainer adds when and where it was measured
        handle.write(first.replace("\n\nCommand:", "\n\nMeasured 2026-12-02 at abc1234.\n\nCommand:", 1))
    quality.write_committed_table("stress", "`stress` table", "| b |\n")  # a --render-only later
    text = open(path, encoding="utf-8").read()
    assert "Measured 2026-12-02 at abc1234." in text and "| b |" in text and "| a |" not in text
    assert text.index("Measured") < text.index("Command:")


def test_postprocess_probe_smoothing_flip_mean_and_groups():
    """benchmarks/postprocess_probe.py: smoothing ignores -inf cells, the flip mean is hand-computed."""
    np = pytest.importorskip("numpy")
    keras = pytest.importorskip("keras")
    import postprocess_probe

    heatmap = np.full((1, 6, 6, 1), 0.5, np.float32)
    heatmap[0, :, :2] = -np.inf  # outside the breast
    smoothed = np.asarray(postprocess_probe.smooth_finite(heatmap, 1.0))
    assert np.all(np.isneginf(smoothed[0, :, :2])) and np.allclose(smoothed[0, :, 2:], 0.5)  # no pull to 0
    spike = np.zeros((1, 9, 9, 1), np.float32)
    spike[0, 4, 4] = 1.0
    blurred = np.asarray(postprocess_probe.smooth_finite(spike, 1.0))[0, ..., 0]
    assert blurred[4, 4] < 1.0 and blurred.argmax() == 40 and np.isclose(blurred[4, 3], blurred[3, 4])

    image = keras.Input(shape=(None, None, 1))
    cumulative = keras.Model(image, keras.ops.cumsum(image, axis=1))  # depends on the row order
    averaged = postprocess_probe.flip_averaged(cumulative)
    column = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1)
    # cumsum: 1, 3, 6; flipped input 3, 2, 1 -> cumsum 3, 5, 6 -> flipped back 6, 5, 3; mean 3.5, 4, 4.5
    assert np.allclose(np.asarray(averaged(column)).ravel(), [3.5, 4.0, 4.5])

    assert postprocess_probe.group_of("hypersensitive-s2") == "hypersensitive"
    assert postprocess_probe.group_of("l2") is None
    results = {f"l2-s{s}": {v: {"sensitivity": {"1": 0.1, "2": 0.2, "4.8": 0.3 + s / 10}, "max_sensitivity": 0.9,
                                "max_fpi": 40.0} for v in postprocess_probe.VARIANTS} for s in (0, 1)}
    table = postprocess_probe.markdown(results, "val")
    assert "| l2 | 0.350 (0.30/0.40); max 0.900 |" in table and table.count("| l2-s") == 2 * len(postprocess_probe.VARIANTS)


def test_the_recentred_stress_variant_runs_on_the_box_axis_only():
    variants = quality.TABLES["stress"]
    assert list(quality.variants_on_axis(variants, "boxes (a)")) == ["l2", "hypersensitive", "recentred"]
    assert list(quality.variants_on_axis(variants, "subtlety")) == ["l2", "hypersensitive"]
    assert list(quality.variants_on_axis(quality.TABLES["main"], None)) == ["l2", "hypersensitive", "focal"]
    assert set(quality.STRESS_VARIANT_AXES["recentred"]) <= set(quality.STRESS_AXES)


def test_named_model_arguments_split_once_and_refuse_a_missing_path():
    import common

    assert common.named_paths(["hs=runs/a/model.keras", "l2=s3://b=c"]) == [("hs", "runs/a/model.keras"),
                                                                            ("l2", "s3://b=c")]
    with pytest.raises(SystemExit, match=r"^--model 'runs/a': expected NAME=PATH$"):
        common.named_paths(["hs=x", "runs/a"])


def test_tuned_defaults_probe_varies_one_thing_per_row_and_needs_the_tuned_table(tmp_path, capsys):
    import tuned_defaults_probe as probe
    import val_probe

    best = {"path": "/q/hypersensitive-best-1.json", "values": {"omega": 0.5413990720774235, "learning_rate": 0.0028}}
    rows = probe.variants(best)
    assert list(rows.values()) == [[], ["--hparams", "/q/hypersensitive-best-1.json"],
                                   ["--omega", "0.5413990720774235"], ["--learning-rate", "0.0028"],
                                   ["--hparams", "/q/hypersensitive-best-1.json", "--learning-rate", "0.001"]]
    assert [val_probe.slug(name) for name in rows] == ["today-s-defaults", "the-tuned-values",
                                                   "defaults-with-omega-0-54-only", "defaults-with-lr-0-0028-only",
                                                   "the-tuned-values-at-the-default-lr"]
    assert probe.main(["--quality-out", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "run `python benchmarks/quality.py tuned` first" in capsys.readouterr().err


def test_capacity_probe_changes_one_model_option_or_the_steps_and_stays_a_valid_train_command():
    import capacity_probe

    defaults = _probe_train_config([])
    for name, flags in capacity_probe.variants().items():
        # the variant's flags come after the budget (val_probe.probe_task), so they may change it
        config = _probe_train_config(flags)
        changed = {k for k, v in vars(config).items() if vars(defaults)[k] != v}
        if name in ("tiny (default)", capacity_probe.HIGH_RESOLUTION):  # the latter differs in its data only
            assert changed == set()
        elif name.startswith("tiny, "):
            assert changed == {"steps_per_epoch"} and config.steps_per_epoch in (150, 200, 400)
        else:
            assert changed == {"model"} and len(config.model) == 1, name


def test_augment_probe_changes_only_the_augmentation_or_the_steps_and_reuses_identical_capacity_rows(tmp_path):
    import augment_probe
    import capacity_probe

    config = _probe_train_config
    defaults = config([])
    table = augment_probe.variants()
    for name, flags in table.items():
        changed = {k for k, v in vars(config(flags)).items() if vars(defaults)[k] != v}
        assert changed <= {"zoom", "rotate", "steps_per_epoch"}, name
        assert ("zoom" in changed or "rotate" in changed) == (name not in augment_probe.CAPACITY_ROWS), name
    # A reused row is the capacity probe's row with the same flags, found where that probe writes it.
    for name, theirs in augment_probe.CAPACITY_ROWS.items():
        assert table[name] == capacity_probe.variants()[theirs]
    model_of = augment_probe.capacity_model(str(tmp_path))
    assert model_of("4x the steps", 2) == str(tmp_path / "tiny--4x-the-steps-s2" / "model.keras")
    assert model_of("zoom 1.5 + turns", 0) is None


def test_val_probe_table_means_over_seeds_with_each_seed_and_its_minutes(tmp_path, monkeypatch):
    import json

    import val_probe

    def froc(s1, s2, s48, top, fpi):
        return {"num_images": 10, "num_malignant_findings": 4, "sensitivity_at_fpi": {"1": s1, "2": s2, "4.8": s48},
                "max_sensitivity": top, "fpi_at_max_sensitivity": fpi}
    results = {("a", 0): {**froc(0.25, 0.5, 0.5, 0.75, 10.2), "train_minutes": 4.0},
               ("a", 1): {**froc(0.75, 0.5, 1.0, 1.0, 20.0), "train_minutes": None}}
    text = val_probe.render("## T", "{images} images, {findings} findings, seeds {seeds}", {"a": []}, [0, 1],
                            results, minutes=True)
    lines = text.splitlines()
    assert lines[2] == "10 images, 4 findings, seeds 0,1"
    assert lines[5] == "|---|---|---|---|---|---|---|"
    assert lines[6] == ("| a | 0.500 (0.250 / 0.750) | 0.500 (0.500 / 0.500) | 0.750 (0.500 / 1.000) | "
                        "0.875 (0.750 / 1.000) | 10 / 20 | 4.0 / - |")
    results.update({("b", 0): froc(0, 0, 0.75, 1, 1), ("b", 1): froc(0, 0, 1.0, 1, 1)})
    paired = val_probe.render("## T", "", {"a": [], "b": []}, [0, 1], results, paired=True).splitlines()
    assert paired[6].endswith("| 10 / 20 | - |")
    # differences +0.25 and 0.0: mean 0.125, sd 0.177, t(0.975, 1) = 12.706 -> half-width 12.706 * 0.125 = 1.588
    assert paired[7].endswith("| 1 / 1 | +0.125 ± 1.588 |")
    monkeypatch.setattr(val_probe, "HERE", str(tmp_path))
    val_probe.write_outputs("a-probe.md", text, str(tmp_path), results, seeds=[0, 1])
    assert (tmp_path / "a-probe.md").read_text() == text
    payload = json.loads((tmp_path / "a_probe.json").read_text())
    assert payload["seeds"] == [0, 1] and sorted(payload["results"]) == ["a|0", "a|1", "b|0", "b|1"]


def test_a_training_set_holding_a_scored_val_image_is_refused():
    import val_probe

    val_probe.check_scored_images_unseen({"a", "b"}, other_train={"c"}, other_val={"a", "b", "d"})
    with pytest.raises(SystemExit, match="1 scored val images are in the other PREP's training split"):
        val_probe.check_scored_images_unseen({"a", "b"}, other_train={"b"}, other_val={"a"})
    with pytest.raises(SystemExit, match="1 scored val images are not in the other PREP's val split"):
        val_probe.check_scored_images_unseen({"a", "b"}, other_train=set(), other_val={"a"})


def test_conspicuity_probe_changes_only_the_loss_and_the_lesion_contrast_and_pairs_the_losses_by_seed():
    import conspicuity_probe

    config = _probe_train_config
    defaults = config([])
    table = conspicuity_probe.variants()
    assert len(table) == len(conspicuity_probe.CONTRASTS) * 2
    for name, flags in table.items():
        changed = {k for k, v in vars(config(flags)).items() if vars(defaults)[k] != v}
        assert changed <= {"loss"}, name
        assert (config(flags).loss == "l2") == name.startswith("L2"), name
    # x1 is the main data itself (the same PREP key); the others differ from it in the contrast only
    assert quality.data_settings({"contrast": 1.0}, False) == quality.data_settings({}, False)
    for c in conspicuity_probe.CONTRASTS:
        changed = {k for k, v in quality.data_settings({"contrast": c}, False).items() if quality.BASE_DATA[k] != v}
        assert changed == (set() if c == 1.0 else {"contrast"})
        assert conspicuity_probe.contrast_of(conspicuity_probe.row_name("L2", c)) == c

    def froc(s48, top):
        return {"sensitivity_at_fpi": {"4.8": s48}, "max_sensitivity": top}
    ours, l2 = conspicuity_probe.row_name("hypersensitive", 2.0), conspicuity_probe.row_name("L2", 2.0)
    results = {(ours, 0): froc(0.75, 1.0), (ours, 1): froc(0.5, 0.75), (l2, 0): froc(0.5, 1.0), (l2, 1): froc(0.5, 1.0)}
    lines = conspicuity_probe.loss_gap_table({ours: [], l2: []}, [0, 1], results).splitlines()
    # differences 0.25 and 0: mean 0.125, sd 0.177, t(1) half-width 12.706 * 0.177 / sqrt(2); max: 0 and -0.25
    assert lines[-1].startswith("| x2 | +0.125 ± 1.588 | -0.125 ± 1.588 |"), lines[-1]
    assert conspicuity_probe.loss_gap_table({ours: []}, [0, 1], results) == ""


def test_grappler_probe_counts_distinct_losses_per_setting_and_rejects_unknown_settings():
    """A setting is reproducible only when more than one process ran and all agree; bad arguments are one line."""
    import grappler_probe

    rows = grappler_probe.summarise({"defaults": [1.25, 1.5, 1.25], "dependency optimizer off": [1.0, 1.0],
                                     "loop optimizer off": [2.0]})
    assert [r["distinct"] for r in rows] == [[1.25, 1.5], [1.0], [2.0]]
    assert [r["reproducible"] for r in rows] == [False, True, False]  # one process proves nothing
    text = grappler_probe.markdown(rows)
    assert "| defaults | 3 | 2: 1.2500000, 1.5000000 | no |" in text
    assert "| dependency optimizer off | 2 | 1: 1.0000000 | yes |" in text
    assert all(set(options) <= {"dependency_optimization", "arithmetic_optimization", "loop_optimization",
                                "disable_meta_optimizer"} for options in grappler_probe.SETTINGS.values())
    with pytest.raises(SystemExit, match="unknown setting.*remapping.*known: defaults"):
        grappler_probe.main(["--settings", "defaults,remapping"])
    with pytest.raises(SystemExit, match="--runs must be at least 1"):
        grappler_probe.main(["--runs", "0"])
