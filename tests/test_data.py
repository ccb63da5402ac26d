"""Training data: constructors, missing values and the errors that name what is wrong
(pure numpy/pandas: no backend is imported)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kinabs
from kinabs import DataError, Experiment, TrainingData


@pytest.fixture(scope="module")
def system():
    return kinabs.lower(kinabs.load_sbml(kinabs.example_model_path()))


def _frame(times=(0.0, 1.0, 2.0), **cols):
    cols = cols or {"php": [0.6, 0.4, 0.2], "pser": [0.09, 0.05, 0.04]}
    return pd.DataFrame(cols, index=pd.Index(list(times), name="time"))


# -- constructors -------------------------------------------------------------------------
def test_from_csv_bundled_example():
    data = TrainingData.from_csv(kinabs.example_data_path())
    raw = pd.read_csv(kinabs.example_data_path(), index_col=0)
    assert data.species == ("php", "pser")
    (e,) = data.experiments
    assert e.name == "Smallbone2013_SerineBiosynthesis"
    np.testing.assert_array_equal(e.times, raw.index.to_numpy(dtype=float))
    np.testing.assert_array_equal(e.values, raw.to_numpy())
    assert e.values.dtype == np.float64 and e.times.dtype == np.float64
    assert e.initial == {"php": 0.6, "pser": 0.09}
    assert e.mask.all()


def test_from_frame_masks_nan_and_takes_initial_from_finite_first_row():
    df = _frame(php=[0.6, np.nan, 0.2], pser=[np.nan, 0.05, 0.04])
    (e,) = TrainingData.from_frame(df).experiments
    np.testing.assert_array_equal(e.mask, [[True, False], [False, True], [True, True]])
    assert e.initial == {"php": 0.6}  # pser keeps the model's initial value
    assert np.isnan(e.values[1, 0]) and np.isnan(e.values[0, 1])


def test_explicit_initial_overrides_first_row():
    (e,) = TrainingData.from_frame(_frame(), initial={"php": 1.5}).experiments
    assert e.initial == {"php": 1.5}
    with pytest.raises(DataError, match="initial values must be finite"):
        TrainingData.from_frame(_frame(), initial={"php": np.nan})


def test_from_arrays_single_and_several():
    t = np.array([0.0, 1.0, 3.0])
    v = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0]])
    one = TrainingData.from_arrays(t, v, ["php", "pser"])
    assert len(one.experiments) == 1
    np.testing.assert_array_equal(one.experiments[0].times, t)
    two = TrainingData.from_arrays([t, t[:2] + 0.5], [v, v[:2]], ["php", "pser"])
    assert [e.name for e in two.experiments] == ["exp0", "exp1"]
    np.testing.assert_array_equal(two.experiments[1].times, [0.5, 1.5])
    assert two.experiments[1].initial == {"php": 1.0, "pser": 2.0}
    # a plain list of floats is one experiment
    lst = TrainingData.from_arrays([0.0, 1.0, 3.0], v, ["php", "pser"])
    assert len(lst.experiments) == 1


def test_coerce_accepts_frame_path_experiment_and_lists(tmp_path):
    df = _frame()
    assert len(TrainingData.coerce(df).experiments) == 1
    path = tmp_path / "run_a.csv"
    df.to_csv(path)
    from_path = TrainingData.coerce(str(path))
    assert from_path.experiments[0].name == "run_a"
    np.testing.assert_array_equal(from_path.experiments[0].values, df.to_numpy())
    e = Experiment([0.0, 1.0], [[1.0], [2.0]], ("php",))
    assert TrainingData.coerce(e).experiments == (e,)
    data = TrainingData.coerce([df, _frame(times=(1.0, 2.0, 4.0)), path])
    assert [x.name for x in data.experiments] == ["exp0", "exp1", "run_a"]
    np.testing.assert_array_equal(data.experiments[1].times, [1.0, 2.0, 4.0])
    assert TrainingData.coerce(data) is data


def test_from_csv_several_files(tmp_path):
    paths = []
    for i, times in enumerate([(0.0, 1.0, 2.0), (0.0, 5.0, 7.0)]):
        p = tmp_path / f"e{i}.csv"
        _frame(times=times).to_csv(p)
        paths.append(p)
    data = TrainingData.from_csv(paths)
    assert [e.name for e in data.experiments] == ["e0", "e1"]
    np.testing.assert_array_equal(data.experiments[1].times, [0.0, 5.0, 7.0])


def test_species_union_in_first_seen_order():
    a = Experiment([0.0, 1.0], [[1.0, 2.0], [1.0, 2.0]], ("pser", "php"))
    b = Experiment([0.0, 1.0], [[1.0, 2.0], [1.0, 2.0]], ("php", "ser"))
    assert TrainingData((a, b)).species == ("pser", "php", "ser")


# -- errors that name the culprit ----------------------------------------------------------
def test_species_not_in_model(system):
    data = TrainingData.from_frame(_frame(php=[1.0, 2.0, 3.0], glucose=[1.0, 2.0, 3.0]))
    with pytest.raises(DataError) as err:
        data.check_against(system)
    msg = str(err.value)
    assert "'glucose'" in msg and "pser" in msg  # names the column and lists the species


def test_check_against_accepts_model_species(system):
    TrainingData.from_csv(kinabs.example_data_path()).check_against(system)
    # a constant species (a parameter of the system) may be measured and started too
    TrainingData.from_frame(_frame(php=[0.6, 0.4, 0.2], p3g=[2.0, 2.0, 2.0])).check_against(
        system)


def test_initial_value_for_unknown_species(system):
    data = TrainingData.from_frame(_frame(), initial={"nothere": 1.0})
    with pytest.raises(DataError, match="nothere"):
        data.check_against(system)


def test_unsorted_times_named():
    with pytest.raises(DataError) as err:
        TrainingData.from_frame(_frame(times=(0.0, 2.0, 1.0)))
    msg = str(err.value)
    assert "sorted" in msg and "row 2" in msg and "time 1.0" in msg


def test_duplicated_time_named():
    with pytest.raises(DataError) as err:
        TrainingData.from_frame(_frame(times=(0.0, 1.0, 1.0)))
    msg = str(err.value)
    assert "appears twice" in msg and "rows 1 and 2" in msg


def test_negative_time_named():
    with pytest.raises(DataError) as err:
        TrainingData.from_frame(_frame(times=(-1.0, 1.0, 2.0)))
    msg = str(err.value)
    assert "negative" in msg and "row 0" in msg and "-1.0" in msg


def test_nonfinite_time_named():
    with pytest.raises(DataError, match="row 1"):
        TrainingData.from_frame(_frame(times=(0.0, np.nan, 2.0)))


def test_empty_table():
    with pytest.raises(DataError, match="empty"):
        TrainingData.from_frame(pd.DataFrame({"php": []}))
    with pytest.raises(DataError, match="empty"):
        TrainingData.from_frame(pd.DataFrame(index=[0.0, 1.0]))


def test_empty_csv(tmp_path):
    p = tmp_path / "header_only.csv"
    p.write_text("time,php,pser\n")
    with pytest.raises(DataError, match="empty"):
        TrainingData.from_csv(p)
    q = tmp_path / "nothing.csv"
    q.write_text("")
    with pytest.raises(DataError, match="nothing.csv"):
        TrainingData.from_csv(q)


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TrainingData.from_csv(tmp_path / "absent.csv")


def test_non_numeric_column_named():
    df = _frame(php=[0.6, 0.4, 0.2], pser=["0.1", "low", "0.2"])
    with pytest.raises(DataError) as err:
        TrainingData.from_frame(df)
    assert "'pser'" in str(err.value) and "not numbers" in str(err.value)


def test_non_numeric_time_column(tmp_path):
    p = tmp_path / "bad_time.csv"
    p.write_text("time,php\nzero,1.0\none,2.0\n")
    with pytest.raises(DataError, match="time column"):
        TrainingData.from_csv(p)


def test_all_nan():
    df = _frame(php=[np.nan] * 3, pser=[np.nan] * 3)
    with pytest.raises(DataError, match="every value is missing"):
        TrainingData.from_frame(df)


def test_infinite_value():
    with pytest.raises(DataError, match="inf"):
        TrainingData.from_frame(_frame(php=[0.6, np.inf, 0.2]))


def test_duplicated_species_column_named():
    df = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=[0.0, 1.0], columns=["php", "php"])
    with pytest.raises(DataError, match="php"):
        TrainingData.from_frame(df)


def test_shape_mismatch():
    with pytest.raises(DataError, match="shape"):
        Experiment([0.0, 1.0], [[1.0, 2.0]], ("php", "pser"))
    with pytest.raises(DataError, match="non-empty"):
        Experiment([], np.zeros((0, 1)), ("php",))


def test_experiment_name_in_errors():
    with pytest.raises(DataError, match="experiment 'day2'"):
        TrainingData.from_frame(_frame(times=(0.0, 2.0, 1.0)), name="day2")


def test_no_experiments_and_bad_type():
    with pytest.raises(DataError, match="no experiments"):
        TrainingData(())
    with pytest.raises(DataError, match="DataFrame"):
        TrainingData.coerce(42)
    with pytest.raises(DataError, match="DataFrame"):
        TrainingData.coerce([])
    with pytest.raises(DataError, match="DataFrame"):
        TrainingData.from_frame(np.zeros((2, 2)))
