"""Facts about the committed tree rather than the code: result files are portable."""

import pathlib
import re

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "results"


def test_committed_results_name_no_machine_specific_paths():
    absolute = re.compile(r"(?<![\w.])/(?:work|home|tmp|root|Users|mnt|scratch)/")
    offenders = [f"{p.name}: {line.strip()}" for p in sorted(RESULTS.glob("*")) if p.suffix in (".md", ".json", ".csv")
                 for line in p.read_text(errors="replace").splitlines() if absolute.search(line)]
    assert not offenders, offenders
