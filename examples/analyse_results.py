"""Analyse a search with pandas: group by an outer setting, pick the best trial, load its
checkpoint, plot the learned weight trajectories.

    python examples/analyse_results.py --out runs/analyse            # a small Ray Tune search
    python examples/analyse_results.py --out runs/analyse --smoke    # a tiny one (about a minute)

Re-running with the same ``--out`` reuses the finished experiment instead of training again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from auxilearn_hpo import plots, results
from auxilearn_hpo.integrations import ray_tune
from auxilearn_hpo.integrations.trial import Trial


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/analyse")
    ap.add_argument("--smoke", action="store_true", help="tiny budget")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()

    # 1. A search: weightings x solvers on the toy problem (Ray Tune, ASHA, checkpoints each epoch).
    space = ray_tune.search_space(weightings=["linear", "nonlinear"], solvers=["neumann", "cg"],
                                  update_every=[1, 5], steps=[1, 3], aux_lr=(1e-3, 1e-1))
    frame, grid = ray_tune.run("toy", param_space=space, num_samples=2 if args.smoke else 8,
                               fixed={"epochs": 5 if args.smoke else 40}, storage_path=str(out), name="search")

    # 2. One row per trial (same columns an Optuna study gives), by score; weights relative to the main task's.
    trials = results.trials_frame(ray_tune.records(grid))
    print(trials[["trial_id", "status", "config/weighting", "config/solver", "score", "weights/harmful"]])

    # 3. Group by an outer setting.
    print(results.summary_frame(trials, by=["weighting", "solver"]))

    # 4. The best finished trial (by score: results.rank_trials), rebuilt from its config and its
    #    last checkpoint and scored on the test set.
    best = results.best_trial(trials)
    result = next(r for r in grid if r.metrics["trial_id"] == best["trial_id"])
    trial = Trial("toy", {k: v for k, v in result.config.items()})
    trial.load_state_dict(ray_tune.load_state(result.checkpoint))
    print(f"best trial {best['trial_id']}: score {best['score']:.4f}, test {trial.test_metric():.4f}, "
          f"weights {trial.learner.weighting.effective_weights()}")

    # 5. Weight trajectories, long format, and a plot (the plot extra).
    weights = results.weights_frame(ray_tune.records(grid))
    print(weights.pivot_table(index="epoch", columns="task", values="weight", aggfunc="mean").tail())
    try:
        path = plots.plot_weight_trajectories(weights, out / "weights.png")
        print(f"plot: {path}")
    except ImportError as err:
        print(err)


if __name__ == "__main__":
    main()
