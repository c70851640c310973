"""Why some images' memory scores differ between 1 process x 4 devices and 2 processes x
2 devices (issue 28): the multi-host test's tiny job run on several layouts, and the
share of images on which each scores.csv column agrees (the test's tolerance) between
each layout and the 1 x 4 run. If a single process with another device count disagrees
on the same columns as much as two processes do, the cause is the device count (the
order of the floating-point reductions that a sharded batch implies), not multi-host.

  python experiments/multihost_agreement.py --workdir=runs/multihost
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
from test_multihost import TINY_JOB, _free_port, _main_env, _scores  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go.", required=True)


def _run_single(workdir: str, devices: int) -> None:
    if not os.path.exists(os.path.join(workdir, "scores.csv")):
        subprocess.run([sys.executable, "-m", "mscad_jax.main", *TINY_JOB, f"--workdir={workdir}"], cwd=REPO,
                       env=_main_env(devices), check=True, capture_output=True)


def _run_two_processes(workdir: str) -> None:
    if os.path.exists(os.path.join(workdir, "scores.csv")):
        return
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "mscad_jax.main", *TINY_JOB, f"--workdir={workdir}",
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=REPO, env=_main_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(2)]
    for p in procs:
        if p.wait(timeout=900):
            raise RuntimeError(f"a process of {workdir} failed")


def main(argv) -> None:
    del argv
    root = _WORKDIR.value
    layouts = {"1x4 again": lambda d: _run_single(d, 4), "1x2": lambda d: _run_single(d, 2),
               "1x1": lambda d: _run_single(d, 1), "2x2": _run_two_processes}
    _run_single(os.path.join(root, "1x4"), 4)
    header, base = _scores(os.path.join(root, "1x4", "scores.csv"))
    rows = []
    for name, run in layouts.items():
        directory = os.path.join(root, name.replace(" ", "_"))
        run(directory)
        other_header, other = _scores(os.path.join(directory, "scores.csv"))
        assert other_header == header
        close = np.abs(base - other) <= 1e-4 * (np.abs(base) + base.std(axis=0) + 1e-12)
        rows.append((name, close.mean(axis=0), close.all(axis=1).mean()))
    columns = [h for h in header if h not in ("index", "class", "is_anomaly")]
    print("| layout vs 1x4 | " + " | ".join(columns) + " | all columns |")
    print("|---|" + "---|" * (len(columns) + 1))
    for name, per_column, every in rows:
        print(f"| {name} | " + " | ".join(f"{100 * per_column[header.index(c)]:.1f}" for c in columns)
              + f" | {100 * every:.1f} |")


if __name__ == "__main__":
    app.run(main)
