"""The how-to's sweep as mushin's ``wf.run`` does it: one in-process Hydra job per seed x trial.

Usage: python benchmarks/multirun.py --seeds 0,1 --trials a,b,c   (run from a scratch folder:
Hydra writes a job folder per job)
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, help="comma-separated torch seeds")
    parser.add_argument("--trials", required=True, help="comma-separated trial labels")
    args = parser.parse_args()

    import torch
    from hydra_zen import builds, instantiate, launch, make_config

    def task_function(cfg):
        torch.manual_seed(cfg.torch_seed)  # mushin's pre_task
        module, data = instantiate(cfg.module), instantiate(cfg.data)
        return {"out": module(data).detach()}

    config = make_config(
        torch_seed=0,
        trial_id="a",
        module=builds(torch.nn.Linear, 10, 1),
        data=builds(torch.arange, 10.0),
    )
    (jobs,) = launch(
        config,
        task_function,
        overrides=[f"torch_seed={args.seeds}", f"trial_id={args.trials}"],
        multirun=True,
        version_base="1.3",
    )
    expected = len(args.seeds.split(",")) * len(args.trials.split(","))
    assert len(jobs) == expected and all(job.return_value is not None for job in jobs)


if __name__ == "__main__":
    main()
