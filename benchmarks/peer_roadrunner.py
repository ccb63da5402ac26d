"""libRoadRunner's side of ``bench_simulate.py``; runs in its own venv
(``benchmarks/_roadrunner_env.sh``), reads a job as JSON on stdin and prints one JSON
object of medians (ms).

Job: ``{"sbml": path, "times": [...], "rtol", "atol", "repeats", "sets": [[...], ...],
"names": [...]}``; ``sets`` are parameter rows in the order of ``names`` (RoadRunner's
ids: promoted local parameters ``R_p``, boundary species ``[S]``).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import roadrunner
from _timing import median_ms  # benchmarks/ is the script's folder


def main() -> None:
    job = json.load(sys.stdin)
    rr = roadrunner.RoadRunner(job["sbml"])
    rr.integrator.relative_tolerance = job["rtol"]
    rr.integrator.absolute_tolerance = job["atol"]
    times = job["times"]

    def one():
        rr.resetAll()
        return rr.simulate(times=times)

    def loop():
        out = []
        for row in job["sets"]:
            rr.resetAll()
            for name, value in zip(job["names"], row):
                rr[name] = value
            out.append(np.asarray(rr.simulate(times=times)))
        return out

    result = {"version": roadrunner.__version__,
              "one_ms": median_ms(one, job["repeats"]),
              "one_last": np.asarray(one())[-1, 1:].tolist()}
    if job["sets"]:
        result["sets_ms"] = median_ms(loop, max(3, job["repeats"] // 5))
        result["sets_last"] = [r[-1, 1:].tolist() for r in loop()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
