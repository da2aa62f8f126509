"""benchmarks/quality_two_stage.py (`quality.py two-stage`): commands, target check, table and resume, without training."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import quality  # noqa: E402
import quality_two_stage as two  # noqa: E402


def froc_json(stage_one: dict, combined: dict, max_one: float, max_two: float, curve: list[dict]) -> dict:
    def block(sens, maximum, curve_):
        return {"sensitivity_at_fpi": sens, "ci95": {k: [v - 0.1, v + 0.1] for k, v in sens.items()},
                "max_sensitivity": maximum, "fpi_at_max_sensitivity": 9.0, "num_images": 10,
                "num_malignant_findings": 5, "curve": curve_}

    payload = block(stage_one, max_one, [])
    payload["two_stage"] = {**block(combined, max_two, curve), "combination": {"name": "product"}}
    return payload


def test_the_table_parses_and_stage_two_flags_are_a_valid_train_stage2_command():
    import argparse

    from keras_hourglass.cli import train_stage2

    args = quality.parse_args(["two-stage"])
    assert args.seeds == [0, 1, 2] and args.variants == ["hypersensitive"]
    parser = argparse.ArgumentParser()
    train_stage2.register(parser.add_subparsers())
    config = train_stage2.build_config(parser.parse_args(["train-stage2", "--data", "P", "--out", "R",
                                                          *two.stage2_flags(args, 1)]))
    assert (config.epochs, config.steps_per_epoch, config.batch_size, config.seed) == (10, 100, 64, 1)
    quick = quality.parse_args(["two-stage", "--quick"])
    assert two.stage2_flags(quick, 0)[:2] == ["--epochs", "1"]


def test_target_check_reads_the_two_stage_curve_at_stage_ones_sensitivity():
    sens = {"0.5": 0.2, "1": 0.3, "2": 0.4, "4.8": 0.5}
    curve = [{"fpi": 0.5, "sensitivity": 0.3}, {"fpi": 1.5, "sensitivity": 0.5}, {"fpi": 6.0, "sensitivity": 0.79}]
    met = two.target_check(froc_json(sens, sens, 0.8, 0.79, curve))
    assert met == {"fpi_to_stage_one_4.8": 1.5, "met_at_2_fpi": True, "max_loss": pytest.approx(0.01),
                   "met_max": True, "met": True}
    late = two.target_check(froc_json(sens, sens, 0.8, 0.7, curve[::2]))
    assert late["fpi_to_stage_one_4.8"] == 6.0 and not late["met_at_2_fpi"] and not late["met_max"]
    nothing = two.target_check(froc_json({**sens, "4.8": 0.0}, sens, 0.0, 0.0, curve))
    assert nothing["met"] is None  # stage one finds nothing: the target is undefined, not met


def fake_record(seed: int, s48: float, t48: float) -> dict:
    froc = froc_json({"0.5": 0.1, "1": 0.2, "2": 0.3, "4.8": s48}, {"0.5": 0.2, "1": 0.3, "2": 0.4, "4.8": t48},
                     0.8, 0.8, [{"fpi": 2.0, "sensitivity": s48}])
    return {"seed": seed, "combination": "product", "stage_one": quality.summarise_froc(froc),
            "two_stage": quality.summarise_froc(froc["two_stage"]), "target": two.target_check(froc),
            "minutes": {"stage_one_train": 6.0, "proposals": 1.0, "stage_two_train": 3.0, "evaluate": 1.0,
                        "total": 10.0}, "commit": "abc"}


def test_table_has_both_systems_with_seed_intervals():
    records = [fake_record(0, 0.3, 0.4), fake_record(1, 0.5, 0.6)]
    agg = two.aggregate(records)
    assert agg["stage_one"]["4.8"] == quality.mean_ci([0.3, 0.5]) and agg["two_stage"]["4.8"][0] == pytest.approx(0.5)
    text = two.markdown(records, quality.parse_args(["two-stage", "--seeds", "0,1"]))
    assert "| stage one alone | 0.100 ± 0.000 | 0.200 ± 0.000 | 0.300 ± 0.000 | 0.400 ± 1.271 | 0.800 ± 0.000 " in text
    assert "| two-stage | 0.200 ± 0.000 | 0.300 ± 0.000 | 0.400 ± 0.000 | 0.500 ± 1.271 |" in text
    assert "| 10.000 ± 0.000 |" in text
    assert "- s0: 0.300 [0.20, 0.40] -> 0.400 [0.30, 0.50]; product;" in text and "target met" in text


def test_a_finished_seed_is_reused_and_render_only_trains_nothing(tmp_path):
    args = quality.parse_args(["two-stage", "--seeds", "0"])
    stage_one = {"seed": 0, "train_flags": ["--seed", "0"], "data_hash": "d", "behaviour": "r", "train_seconds": 60}
    key = {"stage_one": {"train_flags": ["--seed", "0"], "data_hash": "d", "behaviour": "r"},
           "stage2_flags": two.stage2_flags(args, 0), "bootstrap": args.bootstrap,
           "stage2_recipe": two.stage2_fingerprint()}
    base = tmp_path / "runs" / "two-stage"
    base.mkdir(parents=True)
    (base / "hypersensitive-s0.record.json").write_text(json.dumps({**fake_record(0, 0.3, 0.4), "key": key}))
    assert two.run_seed(args, str(tmp_path), "PREP", stage_one)["key"] == key  # no subprocess: nothing to run
    (base / "hypersensitive-s0.record.json").unlink()
    args.render_only = True
    assert two.run_seed(args, str(tmp_path), "PREP", stage_one) is None


def test_same_budget_row_and_paired_differences():
    records = [fake_record(0, 0.3, 0.4), fake_record(1, 0.5, 0.7)]
    for record, same in zip(records, (0.35, 0.55)):
        record[two.SAME_BUDGET] = {**record["stage_one"], "sensitivity_at_fpi": {
            **record["stage_one"]["sensitivity_at_fpi"], "4.8": same}}
        record["minutes"]["same_budget_train"] = 12.0
    assert two.paired(records, "stage_one", "4.8") == [pytest.approx(0.1), pytest.approx(0.2)]
    assert two.paired(records, two.SAME_BUDGET, "4.8") == [pytest.approx(0.05), pytest.approx(0.15)]
    text = two.markdown(records, quality.parse_args(["two-stage", "--seeds", "0,1"]))
    assert "| stage one alone, 2x steps (the two-stage total budget) |" in text and "| 12.000 ± 0.000 |" in text
    assert "| Δ two-stage − stage one alone (paired) |" in text
    assert two.aggregate(records)["two_stage_minus_stage_one"]["4.8"][0] == pytest.approx(0.15)
    text = two.markdown(records[:1] + [fake_record(2, 0.3, 0.4)], quality.parse_args(["two-stage"]))
    assert "2x steps" not in text  # a seed without the row: the row is left out, not half-filled
