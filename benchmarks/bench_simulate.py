"""Simulation speed against libRoadRunner (issue 18): serine per call and 100 perturbed
parameter sets, kinabs-JAX (vmapped, the default, and sequential batches), kinabs-torch and
libRoadRunner side by side in one run, with ratios and the largest difference between
the sides' final states.

Run:  python benchmarks/bench_simulate.py [--repeats 21] [--skip-peer] [--backends jax,torch]
      (libRoadRunner runs in its own venv: benchmarks/_roadrunner_env.sh creates it)

Everything at rtol 1e-8, atol 1e-10, 10 output times on 0..10 (the serine data's), the
median of ``--repeats`` calls after a warm-up (the first call compiles). The 100 sets
multiply each parameter of serine by 10^U(-1, 1) (seed 0), all but the compartment
``cell`` (libRoadRunner keeps amounts when a compartment changes, kinabs concentrations:
not the same experiment). libRoadRunner sees the model with its local parameters
promoted to global ones (libsbml's converter), which it needs to set them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _timing import median_ms  # benchmarks/ is the script's folder

HERE = Path(__file__).resolve().parent
RTOL, ATOL = 1e-8, 1e-10
TIMES = np.linspace(0.0, 10.0, 10)
OUTPUTS = ["php", "pser"]  # the floating species, as libRoadRunner's columns


def parameter_sets(system, n: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sets = system.parameter_defaults[None] * 10 ** rng.uniform(-1, 1, (n, len(system.parameters)))
    sets[:, system.parameters.index("cell")] = system.parameter_defaults[
        system.parameters.index("cell")]
    return sets


def promoted_sbml(source: Path, target: Path, system) -> list[str]:
    """Write ``source`` with local parameters promoted; RoadRunner's id of each kinabs
    parameter (``R.p`` -> ``R_p``, a boundary species ``S`` -> ``[S]``)."""
    import libsbml

    doc = libsbml.readSBMLFromFile(str(source))
    props = libsbml.ConversionProperties()
    props.addOption("promoteLocalParameters", True)
    if doc.convert(props) != libsbml.LIBSBML_OPERATION_SUCCESS:
        raise RuntimeError("libsbml could not promote the local parameters")
    libsbml.writeSBMLToFile(doc, str(target))
    model = doc.getModel()
    names = []
    for pid in system.parameters:
        if "." in pid:
            name = pid.replace(".", "_")
            assert model.getParameter(name) is not None, name
        elif model.getSpecies(pid) is not None:
            name = f"[{pid}]"
        else:
            name = pid
        names.append(name)
    return names


def run_kinabs(backend: str, model, sets, repeats: int) -> dict:
    import kinabs

    out = {}
    for batching in (("auto", "sequential") if backend == "jax" else ("auto",)):
        opts = kinabs.SolverOptions(rtol=RTOL, atol=ATOL, batching=batching)
        key = "" if batching == "auto" else f" ({batching})"
        if not key:
            one = kinabs.simulate(model, TIMES, solver=opts, backend=backend, outputs=OUTPUTS)
            out["one_ms"] = median_ms(
                lambda o=opts: kinabs.simulate(model, TIMES, solver=o, backend=backend,
                                               outputs=OUTPUTS), repeats)
            out["one_last"] = one.values[0, -1].tolist()
            out["one_steps"] = int(one.steps[0])
        res = kinabs.simulate(model, TIMES, parameters=sets, solver=opts, backend=backend,
                              outputs=OUTPUTS)
        out["sets_ms" + key] = median_ms(
            lambda o=opts: kinabs.simulate(model, TIMES, parameters=sets, solver=o,
                                           backend=backend, outputs=OUTPUTS),
            max(3, repeats // 5))
        out["sets_last" + key] = res.values[:, -1].tolist()
        out["sets_steps" + key] = int(np.sum(res.steps))
    return out


def run_peer(sbml: Path, names: list[str], sets: np.ndarray, repeats: int) -> dict | None:
    try:
        python = subprocess.run(["bash", str(HERE / "_roadrunner_env.sh")], check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except subprocess.CalledProcessError as err:
        print(f"libRoadRunner venv could not be made: {err.stderr[-500:]}", file=sys.stderr)
        return None
    job = {"sbml": str(sbml), "times": TIMES.tolist(), "rtol": RTOL, "atol": ATOL,
           "repeats": repeats, "sets": sets.tolist(), "names": names}
    proc = subprocess.run([python, str(HERE / "peer_roadrunner.py")], input=json.dumps(job),
                          capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def largest_difference(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = np.max(np.abs(b), axis=0)  # each species' largest final value over the sets
    return float(np.max(np.abs(a - b) / scale))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--backends", default="jax,torch")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = ap.parse_args(argv)

    import kinabs

    model = kinabs.load_sbml(kinabs.example_model_path())
    system = kinabs.lower(model)
    sets = parameter_sets(system)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_peer:
            sbml = Path(tmp) / "serine_promoted.xml"
            names = promoted_sbml(Path(kinabs.example_model_path()), sbml, system)
            peer = run_peer(sbml, names, sets, args.repeats)
            if peer:
                results["libRoadRunner " + peer["version"]] = peer
    for backend in args.backends.split(","):
        results[f"kinabs-{backend}"] = run_kinabs(backend, model, sets, args.repeats)

    peer = next((v for k, v in results.items() if k.startswith("libRoadRunner")), None)
    print(f"serine, rtol {RTOL:g}, atol {ATOL:g}, {len(TIMES)} output times; medians; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'run':28s} {'one ms':>9s} {'x RR':>7s} {'100 sets ms':>12s} {'x RR':>7s} "
          f"{'steps (one / 100)':>18s}  final states vs RR (of each species' largest)")
    for name, r in results.items():
        for key in ("", " (sequential)"):
            if "sets_ms" + key not in r:
                continue
            one = r.get("one_ms") if not key else None
            ratio_one = f"{one / peer['one_ms']:.2f}" if peer and one else "-"
            ratio_sets = f"{r['sets_ms' + key] / peer['sets_ms']:.2f}" if peer else "-"
            diff = (largest_difference(r["sets_last" + key], peer["sets_last"])
                    if peer and r is not peer else float("nan"))
            steps = f"{r.get('one_steps', '-')} / {r.get('sets_steps' + key, '-')}"
            one_s = f"{one:9.3f}" if one else f"{'-':>9s}"
            print(f"{name + key:28s} {one_s} {ratio_one:>7s} {r['sets_ms' + key]:12.1f} "
                  f"{ratio_sets:>7s} {steps:>18s}  {diff:.1e}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
