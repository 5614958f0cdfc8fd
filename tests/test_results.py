"""The results layer: run records, the validation split, partitions users expect, sweeps and reports."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from datamodules import ClassesPerClient, Digits, Dirichlet, QuantitySkew
from flcore import FederatedTrainer
from flcore.report import (gaps_to_baseline, group_mean_curves, load_runs, markdown_table, overtakes_at, overtaking,
                           relative_speed, rounds_to, smoothed_gap, summarize)
from flcore.report_figures import plot_gap
from flcore.strategies import FedAvg
from flcore.sweep import expand, run_lock, run_status, select
from lightning_modules import ClientModule
from lightning_modules.models import CNN
from tests.conftest import QUICKSTART


def _trainer(tmp_path, rounds=4, **kw):
    return FederatedTrainer(strategy=FedAvg(), rounds=rounds, clients_per_round=4, eval_every=2,
                            local={"max_epochs": 1}, log_dir=str(tmp_path), name="rec", **kw)


def test_validation_split_is_held_out_and_seeded():
    full = Digits(num_clients=10)
    full.setup()
    dm = Digits(num_clients=10, val_size=0.2, val_seed=3)
    dm.setup()
    n = len(full.y_train)
    assert len(dm.y_val) == round(0.2 * n) and len(dm.y_train) == n - len(dm.y_val)
    assert sum(dm.client_sizes) == len(dm.y_train)  # clients hold everything but the validation set
    # the two sets together are the original training set (as a multiset of rows)
    rows = torch.cat([dm.x_train, dm.x_val]).flatten(1)
    order = lambda t: t[np.lexsort(t.numpy().T[::-1])]  # noqa: E731
    assert torch.equal(order(rows), order(full.x_train.flatten(1)))
    again = Digits(num_clients=10, val_size=0.2, val_seed=3)
    again.setup()
    assert torch.equal(again.y_val, dm.y_val)
    other = Digits(num_clients=10, val_size=0.2, val_seed=4)
    other.setup()
    assert not torch.equal(other.x_val, dm.x_val)
    with pytest.raises(ValueError, match="data.val_size"):
        Digits(num_clients=10, val_size=-1)
    with pytest.raises(ValueError, match="data.val_size"):
        Digits(num_clients=10, val_size=1790).setup()


def test_run_leaves_metrics_csv_and_results_json(tmp_path):
    torch.manual_seed(0)
    dm = Digits(num_clients=10, batch_size=20, val_size=0.1, partition=Dirichlet(0.5))
    trainer = _trainer(tmp_path, report_best_test=True)
    summary = trainer.fit(ClientModule(CNN(1, 10, 8)), dm)
    run = trainer.run_dir
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3, 4]
    evals = [r for r in rows if r["global/val_acc"]]
    assert [int(r["round"]) for r in evals] == [2, 4]
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "finished" and record["rounds_completed"] == 4
    assert record["final"]["global/test_acc"] == pytest.approx(float(rows[-1]["global/test_acc"]))
    best = max(evals, key=lambda r: float(r["global/val_acc"]))
    assert record["selected_by_val"]["round"] == int(best["round"])
    assert record["test_acc_at_best_val"] == pytest.approx(float(best["global/test_acc"]))
    assert summary["test_acc_at_best_val"] == pytest.approx(record["test_acc_at_best_val"])
    assert record["bytes_up"] == pytest.approx(sum(float(r["round/bytes_up"]) for r in rows))
    assert record["best_test_acc_paper_protocol"]["test_acc"] == pytest.approx(
        max(float(r["global/test_acc"]) for r in evals))
    assert record["versions"]["torch"].startswith("2.14")
    assert (run / "partition.png").stat().st_size > 1000


def test_resume_does_not_log_rounds_twice(tmp_path):
    dm = Digits(num_clients=10, batch_size=20)
    first = _trainer(tmp_path, rounds=2)
    first.checkpoint_every = 1
    first.fit(ClientModule(CNN(1, 10, 8)), dm)
    # pretend the run went on to round 3 without a checkpoint, then resume from round 2
    rows = (first.run_dir / "metrics.csv").read_text().splitlines()
    (first.run_dir / "metrics.csv").write_text("\n".join(rows + [rows[-1].replace("2,", "3,", 1)]) + "\n")
    resumed = _trainer(tmp_path, rounds=4)
    resumed.fit(ClientModule(CNN(1, 10, 8)), Digits(num_clients=10, batch_size=20), ckpt_path="last")
    with (resumed.run_dir / "metrics.csv").open() as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


@pytest.mark.parametrize("k", [1, 3])
def test_classes_per_client_gives_exactly_k_classes(k):
    labels = np.repeat(np.arange(10), 50)
    parts = ClassesPerClient(k)(labels, 20, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(500))  # a partition
    assert all(len(np.unique(labels[p])) == k for p in parts)
    assert set(np.concatenate([np.unique(labels[p]) for p in parts]).tolist()) == set(range(10))
    with pytest.raises(ValueError, match="partition.k"):
        ClassesPerClient(11)(labels, 20, np.random.default_rng(0))


@pytest.mark.parametrize("dist", ["dirichlet", "power_law"])
def test_quantity_skew_sizes_vary_labels_do_not(dist):
    labels = np.repeat(np.arange(10), 300)
    parts = QuantitySkew(dist, beta=0.3, alpha=1.2, min_size=5)(labels, 30, np.random.default_rng(1))
    sizes = np.array([len(p) for p in parts])
    assert sorted(np.concatenate(parts).tolist()) == list(range(3000))
    assert sizes.min() >= 5 and sizes.max() > 4 * np.median(sizes)
    big = parts[int(np.argmax(sizes))]
    assert np.bincount(labels[big], minlength=10).min() > 0.5 * len(big) / 10  # labels stay IID


def test_power_law_proportions_follow_the_exponent():
    p = np.sort(QuantitySkew("power_law", alpha=2.0).proportions(4, np.random.default_rng(0)))[::-1]
    assert p == pytest.approx(np.array([1, 1 / 4, 1 / 9, 1 / 16]) / (1 + 1 / 4 + 1 / 9 + 1 / 16))


def test_partition_bubble_chart_has_one_bubble_per_nonzero_count():
    from datamodules.plot import plot_label_distribution

    counts = np.array([[3, 0, 1], [0, 0, 5]])
    fig = plot_label_distribution(counts, title="t")
    offsets = fig.axes[0].collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(offsets).tolist())) == [(0, 0), (0, 2), (1, 2)]
    sizes = fig.axes[0].collections[0].get_sizes()
    assert max(sizes) == pytest.approx(300.0) and min(sizes) == pytest.approx(60.0)


def test_rounds_to_target_and_grouping():
    assert rounds_to([(5, 0.4), (10, 0.61), (15, 0.7)], 0.6) == 10
    assert rounds_to([(5, 0.4)], 0.6) is None
    runs = [{"group": "a", "record": {"rounds_completed": 10, "final": {"global/test_acc": acc},
                                       "test_acc_at_best_val": acc - 0.1, "bytes_up": 1e6, "bytes_down": 1e6,
                                       "wall_time_s": 1.0}, "curve": [(5, acc - 0.2), (10, acc)]}
            for acc in (0.6, 0.8)]
    row = summarize(runs, (0.7,))[0]
    assert row["runs"] == 2 and row["final_test_acc"][0] == pytest.approx(0.7)
    assert row["final_test_acc"][1] == pytest.approx(math.sqrt(0.02))
    assert row["rounds_to_0.7"] == (10, 1)
    assert "70.00 ± 14.14" in markdown_table([row], (0.7,))
    # mean of the last evaluations: (0.4 + 0.6) / 2 and (0.6 + 0.8) / 2, then over the two runs
    assert row["last_evals_mean"][0] == pytest.approx(0.6) and row["last_evals_mean"][1] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(row["best_test_acc_paper_protocol"][0])  # not recorded by these runs: "—"
    runs[0]["record"]["best_test_acc_paper_protocol"] = {"round": 10, "test_acc": 0.65}
    best = summarize(runs, (0.7,))[0]["best_test_acc_paper_protocol"]
    assert best[0] == 0.65 and math.isnan(best[1])  # one value: no spread, printed bare
    assert "| 65.00 |" in markdown_table(summarize(runs, (0.7,)), (0.7,))
    # early phase: the mean over the evaluations at rounds <= 7 (round 5 only), then over the runs
    runs.append({"group": "b", "record": {"rounds_completed": 10}, "curve": [(10, 0.9)]})  # none that early
    rows = summarize(runs, (), 1, early=7)
    assert rows[0]["early_mean"][0] == pytest.approx(0.5) and rows[0]["early_mean"][1] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(rows[1]["early_mean"][0])
    table = markdown_table(rows, (), 1)
    assert "| mean of last 1 evals (%) | mean test acc, rounds <= 7 (%) |" in table and "| 50.00 ± 14.14 |" in table
    assert "early_mean" not in summarize(runs)[0]


def test_relative_speed_as_table_1():
    def run(group, curve):
        return {"group": group, "record": {"rounds_completed": 50}, "curve": curve}

    runs = [run("fedavg", [(10, 0.5), (40, 0.86)]), run("fedin", [(10, 0.7), (20, 0.85)]),
            run("slow", [(10, 0.1), (50, 0.2)])]
    rows = summarize(runs, (0.85,))
    relative_speed(rows, "fedavg", 0.85)
    assert [r["speed"] for r in rows] == [1.0, 2.0, None]  # 40 / 40, 40 / 20, never reached
    table = markdown_table(rows, (0.85,))
    assert "speed vs baseline at 85 %" in table and "| x2.0 |" in table and "| — |" in table
    with pytest.raises(ValueError, match="--baseline: no run group 'nope'"):
        relative_speed(rows, "nope", 0.85)


def test_relative_speed_pairs_seeds():
    """A one-seed variant is compared with the baseline's run of its seed, not the seed mean."""
    runs = [{"group": "fedavg", "seed": str(s), "record": {}, "curve": [(r, 0.9)]} for s, r in ((0, 10), (1, 20), (2, 30))]
    runs.append({"group": "variant", "seed": "0", "record": {}, "curve": [(10, 0.9)]})
    rows = summarize(runs, (0.85,))
    relative_speed(rows, "fedavg", 0.85)
    assert rows[1]["speed"] == pytest.approx(2.0)  # unpaired: the 3-seed mean 20 / 10
    relative_speed(rows, "fedavg", 0.85, runs)
    assert rows[1]["speed"] == pytest.approx(1.0) and rows[0]["speed"] == pytest.approx(1.0)  # 10 / 10; 20 / 20


def test_overtaking_round_on_smoothed_curves():
    rounds = list(range(5, 55, 5))
    base = [(r, 0.80) for r in rounds]
    method = list(zip(rounds, [0.70, 0.70, 0.70, 0.70, 0.90, 0.90, 0.78, 0.90, 0.90, 0.90]))
    assert overtakes_at(method, base, 1) == 40  # the dip at round 35 is the last time below
    # trailing means of 2: 0.70 0.70 0.70 0.80 0.90 0.84 0.84 0.90 0.90 from round 10: at or above from 25
    assert overtakes_at(method, base, 2) == 25
    assert overtakes_at(base, method, 1) is None  # ends below
    assert overtakes_at([(r, 0.95) for r in rounds], base, 3) == 15  # never below: the first smoothed round
    assert overtakes_at(method[:2], base, 3) is None  # fewer shared rounds than the window
    with pytest.raises(ValueError, match="--last: must be >= 1"):
        overtakes_at(method, base, 0)

    def run(group, curve):
        return {"group": group, "record": {"rounds_completed": 50}, "curve": curve}

    # two seeds of "cross" whose mean is `method`; "slow" stays below
    runs = [run("fedavg", base), run("cross", [(r, a + 0.05) for r, a in method]),
            run("cross", [(r, a - 0.05) for r, a in method]), run("slow", [(r, 0.5) for r in rounds])]
    rows = summarize(runs)
    overtaking(rows, runs, "fedavg", 1)
    assert [r["overtakes_round"] for r in rows] == [None, 40, None]
    table = markdown_table(rows)
    assert "overtakes fedavg at round" in table
    assert table.splitlines()[2].split(" | ")[7] == "—" and " | 40 | " in table and " | never | " in table
    with pytest.raises(ValueError, match="--baseline: no run group 'nope'"):
        overtaking(rows, runs, "nope", 1)
    cross = group_mean_curves(runs)["cross"]  # the seeds' mean
    assert [r for r, _ in cross] == rounds and [a for _, a in cross] == pytest.approx([a for _, a in method])
    gap_rounds, gap = smoothed_gap(method, base, 2)
    assert gap_rounds == rounds[1:]
    assert gap == pytest.approx([-0.10, -0.10, -0.10, 0.00, 0.10, 0.04, 0.04, 0.10, 0.10])  # trailing means above - 0.80
    assert smoothed_gap(method[:2], base, 3)[0] == []


def test_gap_to_baseline_is_paired_by_seed():
    """A one-seed variant is compared with the baseline's run of its seed, not the seeds' mean."""
    rounds = list(range(5, 55, 5))

    def run(group, seed, acc):
        return {"group": group, "seed": seed, "record": {"rounds_completed": 50}, "curve": [(r, acc) for r in rounds]}

    runs = [run("fedavg", "0", 0.80), run("fedavg", "1", 0.90), run("fedavg", "2", 0.70),
            run("one", "1", 0.85), run("all", "0", 0.81), run("all", "1", 0.81), run("all", "2", 0.81),
            run("other", "7", 0.79)]
    gaps = gaps_to_baseline(runs, "fedavg", 2)
    assert gaps["one"][1] == pytest.approx([-0.05] * 9)   # against seed 1 only (0.90), not the mean 0.80
    assert gaps["all"][1] == pytest.approx([0.01] * 9)    # three seeds each: the means
    assert gaps["other"][1] == pytest.approx([-0.01] * 9)  # no shared seed: all of the baseline's runs
    rows = summarize(runs)
    overtaking(rows, runs, "fedavg", 2)
    assert {r["group"]: r["overtakes_round"] for r in rows} == {"fedavg": None, "one": None, "all": 10, "other": None}
    with pytest.raises(ValueError, match="--baseline: no run group 'nope' with a test curve"):
        gaps_to_baseline(runs, "nope", 2)


def test_gap_figure_is_written_and_checks_its_baseline(tmp_path):
    pytest.importorskip("matplotlib")
    rounds = list(range(5, 55, 5))
    runs = [{"group": g, "record": {}, "curve": [(r, a + 0.01 * r) for r in rounds]} for g, a in (("fedavg", 0.3), ("x", 0.4))]
    plot_gap(runs, "fedavg", 3, tmp_path / "gap.png")
    assert (tmp_path / "gap.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="--baseline: no run group 'nope' with a test curve"):
        plot_gap(runs, "nope", 3, tmp_path / "gap.png")


@pytest.mark.slow
def test_sweep_then_report_on_digits(tmp_path, capsys):
    """The acceptance run: a 2-method x 2-seed sweep on Digits, then the report."""
    from flcore.cli import main

    quick = open(QUICKSTART).read()
    fedavg = tmp_path / "fedavg.yaml"
    fedavg.write_text(quick.replace("class_path: flcore.strategies.FedCross", "class_path: flcore.strategies.FedAvg")
                      .replace("    init_args:\n      alpha: 0.99\n      selection: lowest_similarity\n", ""))
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
log_dir: {tmp_path / 'runs'}
configs:
  fedavg: {fedavg}
  fedcross: {QUICKSTART}
grid:
  seed_everything: [0, 1]
args: [--trainer.rounds, "2", --trainer.eval_every, "1", --trainer.local.max_epochs, "1"]
""")
    runs = expand(__import__("yaml").safe_load(grid.read_text()))
    assert [r["name"] for r in runs] == ["fedavg__seed=0", "fedavg__seed=1", "fedcross__seed=0", "fedcross__seed=1"]
    assert main(["sweep", str(grid), "--workers", "2"]) == 0
    assert all(run_status(r["run_root"]) == "finished" for r in runs)
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("finished ") == 4  # a second sweep would skip every run
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--target", "0.3"]) == 0
    loaded = load_runs([tmp_path / "runs"])
    assert sorted({r["group"] for r in loaded}) == ["fedavg", "fedcross"]
    table = (out / "report.md").read_text()
    assert table.count("\n") == 4 and "| fedavg | 2 | 2 |" in table
    with (out / "report.csv").open() as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    finals = [r["record"]["final"]["global/test_acc"] for r in loaded if r["group"] == "fedavg"]
    assert float(rows["fedavg"]["final_test_acc_mean"]) == pytest.approx(np.mean(finals))
    assert (out / "curves.png").stat().st_size > 1000


def test_client_test_sets_follow_label_distribution():
    dm = Digits(num_clients=10, partition=Dirichlet(0.3))
    dm.setup()
    sets = dm.client_test_sets(50)
    dist = dm.label_distribution()
    for counts, idx in zip(dist, sets):
        assert len(idx) == 50 and len(np.unique(idx)) == 50
        got = np.bincount(dm.y_test.numpy()[idx], minlength=10)
        expected = counts / counts.sum() * 50
        assert np.all(np.abs(got - expected) < 1 + 1e-9)  # largest-remainder rounding
    assert dm.client_test_sets(50) is sets  # cached


def test_per_client_evaluation_matches_hand_computation(tmp_path):
    from flcore.evaluation import client_accuracy_stats

    dm = Digits(num_clients=10, batch_size=20, partition=Dirichlet(0.5))
    trainer = _trainer(tmp_path, rounds=2, client_eval_every=2, client_test_size=30)
    trainer.fit(ClientModule(CNN(1, 10, 8)), dm)
    row = trainer.history[-1]
    # recompute by hand from the saved global model
    from flcore.checkpoint import load_checkpoint

    net = CNN(1, 10, 8)
    net.load_state_dict(load_checkpoint(trainer.run_dir / "checkpoints" / "last.ckpt")["strategy_state"]["global"])
    net.eval()
    with torch.no_grad():
        accs = np.array([(net(dm.x_test[s]).argmax(1) == dm.y_test[s]).float().mean().item()
                         for s in dm.client_test_sets(30)])
    assert row["clients/test_acc_mean"] == pytest.approx(accs.mean(), abs=1e-6)
    assert row["clients/test_acc_worst10"] == pytest.approx(np.sort(accs)[0], abs=1e-6)  # ceil(0.1 * 10) = 1
    stats = client_accuracy_stats(np.array([0.5, np.nan, 1.0, 0.0]))
    assert stats["clients/test_acc_mean"] == pytest.approx(0.5) and stats["clients/test_acc_worst10"] == 0.0


def test_sweep_variant_labels_carry_their_own_args():
    """A ``configs`` entry may be a config plus arguments of its own (a variant under its label);
    the variant's args come after the grid point's and before the file-wide ones."""
    runs = expand({"log_dir": "runs/x",
                   "configs": {"pm": "a.yaml", "pm_equal": {"config": "a.yaml", "args": ["--k", "equal"]}},
                   "grid": {"seed_everything": [3]}, "args": ["--z", "1"]})
    assert [r["name"] for r in runs] == ["pm__seed=3", "pm_equal__seed=3"]
    assert runs[1]["config"] == "a.yaml"
    assert runs[1]["args"][:6] == ["--seed_everything", "3", "--k", "equal", "--z", "1"]
    assert runs[0]["args"][:4] == ["--seed_everything", "3", "--z", "1"]
    with pytest.raises(ValueError, match="configs.bad: a variant needs 'config'"):
        expand({"configs": {"bad": {"args": []}}})


def test_sweep_linked_keys_vary_together():
    """``"a,b": [[1, 1], [2, 2]]`` runs two points (not four), named by the first key: how a new
    seed also draws a new partition."""
    runs = expand({"log_dir": "runs/x", "configs": {"fedavg": "a.yaml"},
                   "grid": {"seed_everything,data.init_args.seed": [[1, 1], [2, 2]],
                            "data.init_args.partition.init_args.beta": [0.5]}})
    assert [r["name"] for r in runs] == ["fedavg__seed=1__beta=0.5", "fedavg__seed=2__beta=0.5"]
    assert runs[1]["args"][:6] == ["--seed_everything", "2", "--data.init_args.seed", "2",
                                   "--data.init_args.partition.init_args.beta", "0.5"]
    with pytest.raises(ValueError, match=r"grid.seed_everything,data.init_args.seed: linked keys take a list of \[value, value\]"):
        expand({"configs": {"a": "a.yaml"}, "grid": {"seed_everything,data.init_args.seed": [1, 2]}})


def test_sweep_only_selects_by_pattern_and_names_bad_patterns():
    runs = expand({"configs": {"fedavg": "a.yaml", "fedmr": "b.yaml", "fedmr_two_stage": "c.yaml"},
                   "grid": {"seed_everything": [0, 1]}})
    assert select(runs, None) is runs
    assert [r["name"] for r in select(runs, ["fedmr__*", "*seed=1"])] == [
        "fedavg__seed=1", "fedmr__seed=0", "fedmr__seed=1", "fedmr_two_stage__seed=1"]
    with pytest.raises(ValueError, match=r"^--only: 'fedcross\*' matches no run of the grid; the runs are: fedavg__seed=0, "):
        select(runs, ["fedmr*", "fedcross*"])


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")
def test_sweep_skips_a_run_another_process_holds(tmp_path, capsys):
    """Two sweeps on one log_dir: a run locked by another live process is reported ``running``
    and not launched; the lock dies with its process."""
    from flcore.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"log_dir: {tmp_path / 'runs'}\nconfigs:\n  x: {tmp_path / 'missing.yaml'}\n")
    run_root = tmp_path / "runs" / "x"
    run_root.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(run_root / "sweep.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with run_lock(run_root) as mine:
            assert not mine
        assert main(["sweep", str(grid)]) == 0  # not launched (its config does not even exist)
        out = capsys.readouterr().out
        assert out.splitlines()[0] == "running   x" and "running      0.0 s  x" in out
        assert not (run_root / "sweep.log").exists()
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run_root) as mine:
        assert mine
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    assert capsys.readouterr().out == "new       x\n"  # free again: the next sweep launches it


def test_report_early_must_be_positive(tmp_path, capsys):
    from flcore import report

    with pytest.raises(SystemExit):
        report.main([str(tmp_path), "--out", str(tmp_path / "out"), "--early", "0"])
    assert "--early: must be >= 1 (rounds), got 0" in capsys.readouterr().err
