"""kinabs.petab on the Benchmark-Models-PEtab collection: the log-likelihood at the
nominal parameters against AMICI's reference values, with AMICI's own check
(``np.isclose(llh, ref, rtol=1e-3, atol=1e-3)``, see shared/petab/README.md).

Problems AMICI has no value for are compared with the llh that shared/petab/README.md
recomputed from the collection's own simulation tables (approximate references, the same
tolerance; only those the README calls usable). The default run checks two small problems
on torch; ``-m slow`` runs the whole collection on JAX.
"""

import time

import numpy as np
import pytest

import kinabs
from tests._shared import SHARED

pytest.importorskip("petab.v1")
import kinabs.petab as kp  # noqa: E402

COLLECTION = SHARED / "petab" / "benchmark-models"
needs_collection = pytest.mark.skipif(not COLLECTION.is_dir(),
                                      reason=f"no benchmark collection at {COLLECTION}")

#: AMICI-dev/AMICI tests/benchmark_models/benchmark_models.yaml (quoted in
#: shared/petab/README.md); Chen_MSB2009 is left out as AMICI leaves it out of its check.
AMICI_LLH = {
    "Bachmann_MSB2011": 418.40573341425295,
    "Beer_MolBioSystems2014": 58622.9145631413,
    "Boehm_JProteomeRes2014": -138.22199693517703,
    "Borghans_BiophysChem1997": 83.3237191357272,
    "Brannmark_JBC2010": -141.889113770537,
    "Bruno_JExpBot2016": 46.688176988431806,
    "Crauste_CellSystems2017": -190.96521897435176,
    "Elowitz_Nature2000": 63.20279991419332,
    "Fiedler_BMCSystBiol2016": 58.58390161681,
    "Fujita_SciSignal2010": 53.08377736998929,
    "Isensee_JCB2018": -3949.375966548649,
    "Lucarelli_CellSystems2018": -1681.6059879426584,
    "Schwen_PONE2014": -943.9992988598723,
    "Sneyd_PNAS2002": 319.79177818768756,
    "Weber_BMC2015": -296.2017922646865,
    "Zheng_PNAS2012": 278.33353271001477,
}
#: llh recomputed from the collection's simulatedData tables (shared/petab/README.md).
SIMULATED_DATA_LLH = {
    "Bertozzi_PNAS2020": -158.86427,
    "Blasi_CellSystems2016": 642.82689,
    "Laske_PLOSComputBiol2019": -315.90591,
    "Raimundez_PCB2020": -550.03598,
    "SalazarCavazos_MBoC2020": -367.18761,
    "Zhao_QuantBiol2020": -777.34427,
}
#: what kinabs refuses, and the feature its error names
UNSUPPORTED = {
    "Smith_BMCSystBiol2013": "event",
    "Liu_IFACPapersOnLine2025": "event",
    "Froehlich_CellSystems2018": "does not exist",  # SBML and condition table not copied
}


def _yaml(name: str):
    folder = COLLECTION / name
    return folder / ("problem.yaml" if name == "Bertozzi_PNAS2020" else f"{name}.yaml")


def _check(name: str, backend: str) -> float:
    t = time.perf_counter()
    result = kp.load(_yaml(name)).evaluate(backend=backend)
    seconds = time.perf_counter() - t
    assert result.ok, {k: v for k, v in result.status.items() if v != "success"}
    ref = AMICI_LLH.get(name, SIMULATED_DATA_LLH.get(name))
    assert np.isclose(result.llh, ref, rtol=1e-3, atol=1e-3), (result.llh, ref)
    return seconds


@needs_collection
@pytest.mark.parametrize("name", ["Boehm_JProteomeRes2014", "Schwen_PONE2014"])
def test_small_benchmark_problems_match_amici_on_torch(name):
    pytest.importorskip("torch")
    _check(name, "torch")


@needs_collection
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AMICI_LLH) + sorted(SIMULATED_DATA_LLH))
def test_benchmark_collection_matches_the_reference_llh_on_jax(name):
    _check(name, "jax")


@needs_collection
@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_benchmark_problems_say_why(name):
    with pytest.raises(kinabs.KinabsError, match=UNSUPPORTED[name]):
        kp.load(_yaml(name))
