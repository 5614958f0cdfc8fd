"""Claims computed from records: paired differences, the paired-t interval, verdicts."""

import math

import pytest

from flcore.claims import claims_table, evaluate_claim, evaluate_claims, load_claims, run_metric
from flcore.plotting import method_of, method_style, partition_of


def _run(group, seed, accs, data_seed=0, final=None):
    curve = [(5 * (i + 1), a) for i, a in enumerate(accs)]
    record = {"final": {"global/test_acc": accs[-1] if final is None else final},
              "config": {"data": {"init_args": {"seed": data_seed}}}}
    return {"group": group, "seed": str(seed), "record": record, "curve": curve}


def _claim(**kw):
    return {"claim": "A beats B", "paper": "+1", "partition": "Dir(0.1)", "method": "a", "baseline": "b",
            "metric": "last_mean", "direction": "higher", **kw}


def test_paired_t_interval_by_hand():
    # per-seed last-2 means: a = 0.80, 0.85, 0.90; b = 0.78, 0.80, 0.86 -> d = 2, 5, 4 points
    runs = [_run("a", 0, [0.0, 0.8, 0.8]), _run("a", 1, [0.0, 0.85, 0.85]), _run("a", 2, [0.0, 0.9, 0.9]),
            _run("b", 0, [0.0, 0.78, 0.78]), _run("b", 1, [0.0, 0.8, 0.8]), _run("b", 2, [0.0, 0.86, 0.86]),
            _run("b", 3, [0.0, 0.1, 0.1])]  # a seed the method did not run: not paired
    out = evaluate_claim(_claim(), runs, last=2)
    assert out["seeds"] == ["0", "1", "2"] and out["n"] == 3
    assert out["diffs"] == pytest.approx([2.0, 5.0, 4.0])
    # mean 11/3, sd = sqrt(((2-11/3)^2 + (5-11/3)^2 + (4-11/3)^2) / 2) = sqrt(7/3); t(0.975, 2) = 4.302653
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)
    assert out["mean"] == pytest.approx(11 / 3)
    assert out["interval"] == pytest.approx((11 / 3 - half, 11 / 3 + half), abs=1e-5)
    assert out["verdict"] == "not distinguishable"  # 11/3 - 3.79 < 0
    assert out["variance"] == "training seed"


def test_verdicts_and_direction():
    a = [_run("a", s, [0.9 + 0.001 * s]) for s in range(3)]
    b = [_run("b", s, [0.8 + 0.002 * s], data_seed=s) for s in range(3)]
    holds = evaluate_claim(_claim(metric="final"), a + b)
    assert holds["verdict"] == "holds" and holds["variance"] == "seed + partition"
    assert evaluate_claim(_claim(metric="final", direction="lower"), a + b)["verdict"] == "contradicted"
    one = evaluate_claim(_claim(metric="final"), a[:1] + b)
    assert one["verdict"] == "one seed" and one["interval"] is None and one["variance"] == "—"
    table = claims_table([holds, one])
    assert "| +10.00, +9.90, +9.80 | 3 | +9.90 |" in table and "**holds**" in table and "one seed" in table


def test_metrics_and_errors():
    run = _run("a", 0, [0.5, 0.7, 0.9])
    run["record"]["best_test_acc_paper_protocol"] = {"test_acc": 0.95}
    assert run_metric(run, "last_mean", last=2) == pytest.approx(0.8)
    assert run_metric(run, "last_std", last=2) == pytest.approx(0.1)
    assert run_metric(run, "early_mean", early=10) == pytest.approx(0.6)
    assert run_metric(run, "rounds_to", target=0.7) == 10 and run_metric(run, "rounds_to", target=0.99) is None
    assert run_metric(run, "best") == 0.95
    with pytest.raises(ValueError, match="metric 'nope' is unknown; allowed: last_mean"):
        run_metric(run, "nope")
    with pytest.raises(ValueError, match="needs 'early'"):
        run_metric(run, "early_mean")
    runs = [run, _run("b", 1, [0.5])]
    with pytest.raises(ValueError, match="share no seed"):
        evaluate_claim(_claim(), runs)
    with pytest.raises(ValueError, match="baseline 'c' has no runs"):
        evaluate_claim(_claim(baseline="c"), runs)
    with pytest.raises(ValueError, match="direction must be 'higher' or 'lower'"):
        evaluate_claim(_claim(direction="up"), runs)
    with pytest.raises(ValueError, match="lacks paper"):
        evaluate_claim({k: v for k, v in _claim().items() if k != "paper"}, runs)
    assert evaluate_claims([_claim(baseline="c")], runs, skip_missing=True) == []


def test_load_claims(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("claims: []\n")
    with pytest.raises(ValueError, match="non-empty 'claims' list"):
        load_claims(path)
    path.write_text("skip_missing: true\nclaims:\n- {claim: x}\n")
    assert load_claims(path) == {"claims": [{"claim": "x"}], "skip_missing": True}


def test_method_colours_are_fixed_across_figures():
    assert method_of("fedcross_iid__seed=0") == method_of("fedcross__beta=0.1") == "fedcross"
    assert method_style("fedcross_iid") == method_style("fedcross__beta=0.5") == ("#d62728", "-")
    assert method_style("fedavg_m09__beta=0.1") == ("#000000", "--")  # a variant: its method's colour, dashed
    assert method_style("brand_new")[1] == "-." and method_style("brand_new") == method_style("brand_new__beta=1")
    assert partition_of("fedavg__beta=0.1") == "beta=0.1" and partition_of("fedmr_iid") == "iid"
