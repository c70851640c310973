"""The exported scores equal the evaluation's when XLA optimises, as users run the code
(the rest of the suite compiles with most optimisations off: conftest)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_exported_scores_equal_the_evaluation_scores_with_xla_optimisations_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_DISABLE_MOST_OPTIMIZATIONS", "XLA_FLAGS")}
    env |= {"PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "optimised_job.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows"] == 540
    # Relative to 1 + |score|: the same compiled function on the same images.
    assert max(report["relative_difference"].values()) < 1e-5, report
