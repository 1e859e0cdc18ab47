"""benchmarks/stats_candidate.py: the target-statistics candidate rule and its stated criterion."""

from __future__ import annotations

import json

from test_generalization_bench import ROOT
from test_generalization_bench import _load as load_benchmark


def _load_benchmark():
    return load_benchmark("stats_candidate")


def _row(iteration, dice, aji=0.7, agreement=0.97, certainty=0.94, foreground=0.4, source=0.99,
         prior_match=-0.05):
    return {"iteration": iteration, "agreement": agreement, "certainty": certainty,
            "foreground": foreground, "prior_match": prior_match, "score": prior_match,
            "degenerate": False, "target": {"dice": dice, "aji": aji, "pq": aji},
            "source": {"dice": source, "aji": 0.95, "pq": 0.95}}


def _run(stats_row, domain="d", seed=0):
    parent = _row(0, 0.90)
    later = _row(20, 0.91, prior_match=-0.01)  # a healthy MaNi checkpoint the guard returns
    return {"domain": domain, "seed": seed, "checkpoints": [parent, later],
            "stats_checkpoints": [parent, stats_row]}


def test_the_statistics_candidate_is_refused_by_the_drift_guards_thresholds_and_the_source():
    bench = _load_benchmark()
    parent = _row(0, 0.9)
    assert bench.statistics_candidate_signs(_row(1, 0.95, agreement=0.962), parent) == []
    assert "agreement fell" in bench.statistics_candidate_signs(
        _row(1, 0.95, agreement=0.955), parent)[0]
    assert "certainty fell" in bench.statistics_candidate_signs(
        _row(1, 0.95, certainty=0.91), parent)[0]
    signs = bench.statistics_candidate_signs(_row(1, 0.95), parent, source_dice=0.975,
                                             parent_source_dice=0.99)
    assert signs and "labelled source Dice fell 0.990 -> 0.975" in signs[0]
    assert bench.statistics_candidate_signs(_row(1, 0.95), parent, source_dice=0.985,
                                            parent_source_dice=0.99) == []


def test_the_rule_returns_statistics_only_when_no_sign_refuses_them():
    bench = _load_benchmark()
    eligible = _run(_row(1, 0.95, prior_match=0.0))
    label, row, signs = bench.returned(eligible, with_candidate=True)
    assert label == "target statistics" and row["target"]["dice"] == 0.95 and signs == []
    refused = _run(_row(1, 0.95, agreement=0.90, prior_match=0.0))
    label, row, signs = bench.returned(refused, with_candidate=True)
    assert label == "iteration 20" and row["target"]["dice"] == 0.91 and signs
    assert bench.returned(eligible, with_candidate=False)[0] == "iteration 20"
    summary = bench.evaluate([eligible, refused], with_candidate=True)
    assert summary["statistics_returned"] == 1
    assert summary["target_dice"] == {"mean": 0.03, "worst": 0.01}


def test_the_criterion_needs_a_higher_mean_and_no_loss_beyond_the_tolerance():
    bench = _load_benchmark()

    def s(mean, worst, aji_worst=0.0, source=0.0):
        return {"target_dice": {"mean": mean, "worst": worst},
                "target_aji": {"mean": 0.0, "worst": aji_worst}, "source_dice_worst": source}

    assert bench.decide(s(0.001, 0.0), s(0.002, -0.01))["adopt"]
    assert not bench.decide(s(0.002, 0.0), s(0.002, 0.0))["adopt"]  # not higher
    assert not bench.decide(s(0.0, 0.0), s(0.01, 0.0, aji_worst=-0.026))["adopt"]
    assert not bench.decide(s(0.0, 0.0), s(0.01, 0.0, source=-0.02))["adopt"]


def test_the_recorded_study_reproduces_from_the_stored_runs(capsys):
    """Re-running the study on the stored benchmark runs gives the recorded JSON (decision, every
    per-run row); docs/hovernet-mani.md reports it."""
    bench = _load_benchmark()
    recorded = json.loads((ROOT / "benchmarks" / "results" / "stats_candidate.json").read_text())
    assert bench.main([]) == recorded
    assert recorded["decision"]["adopt"] is False


def test_the_adaptation_benchmark_summarises_with_the_shipped_guard_by_default():
    """``mani_adaptation.summarise`` without a ``guard`` re-applies ``selection.GUARD`` (it once
    passed ``None`` on and crashed at the end of a 30-minute run, after every run was measured)."""
    mani = load_benchmark("mani_adaptation")
    from napari_dgseg.core.train.selection import GUARD, UNGUARDED, choose

    stored = json.loads((ROOT / "benchmarks" / "results" /
                         "mani_adaptation_nuclei-hovernet_heldout_pipeline_long.json").read_text())
    result = mani.summarise(json.loads(json.dumps(stored)))
    for run in result["runs"]:
        i = choose(run["checkpoints"], guard=GUARD)
        assert run["chosen_iteration"] == run["checkpoints"][i]["iteration"]
    # a guard that decides differently on these runs shows that the argument is used
    loose = mani.summarise(json.loads(json.dumps(stored)), guard=UNGUARDED)
    assert [r["chosen_iteration"] for r in loose["runs"]] != \
        [r["chosen_iteration"] for r in result["runs"]]
    assert set(result["summary"]) == set(stored["summary"])


def test_the_classical_row_scores_the_runs_own_test_tiles():
    """``add_classical`` re-makes each stored run's test tiles from its seed and scores the
    classical method on them; the table then has a classical row per domain."""
    import numpy as np

    from napari_dgseg.core.classical import classical_nuclei
    from napari_dgseg.core.metrics import instance_scores

    mani = load_benchmark("mani_adaptation")
    stored = json.loads((ROOT / "benchmarks" / "results" /
                         "mani_adaptation_nuclei-hovernet_fresh_seeds9-10.json").read_text())
    run = stored["runs"][0]
    one = {"settings": {"n_test": 2, "n_source_test": 1},
           "runs": [{"domain": run["domain"], "seed": run["seed"]}]}
    got = mani.add_classical(one)["runs"][0]["classical"]
    base = 10_000 * (run["seed"] + 1)
    img, lab = mani.make_tile(run["domain"], base + 500)
    img2, lab2 = mani.make_tile(run["domain"], base + 501)
    want = np.mean([instance_scores(classical_nuclei(i)[1], g)["dice"]
                    for i, g in ((img, lab), (img2, lab2))])
    assert got["target"]["dice"] == round(float(want), 4)
    assert "classical baseline" in mani.table(mani.summarise(stored))
