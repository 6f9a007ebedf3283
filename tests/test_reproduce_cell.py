"The comparison `bench/reproduce_cell.py` makes between a committed cell table and its re-run."
import importlib.util, sys
from pathlib import Path
import pandas as pd, pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('reproduce_cell', ROOT/'bench'/'reproduce_cell.py')
rc = importlib.util.module_from_spec(spec); spec.loader.exec_module(rc)

def cells(values):
    return pd.DataFrame([dict(method='random', task='t', fraction=1.0, seed=s, metric='auc', value=v) for s, v in enumerate(values)])

def test_equal_tables_agree():
    r = rc.compare(cells([0.71234, 0.5, 0.6]), cells([0.71234, 0.5, 0.6]))
    assert r['n_values'] == 3 and r['max_abs_diff'] == 0 and r['agree_to_printed_precision'] == 3

def test_a_changed_value_is_found():
    r = rc.compare(cells([0.7, 0.5, 0.6]), cells([0.7, 0.52, 0.6]))
    assert r['agree_to_printed_precision'] == 2 and r['max_abs_diff'] == pytest.approx(0.02) and r['worst']['seed'] == 1

def test_missing_rows_are_an_error():
    with pytest.raises(ValueError, match='differ in their rows'): rc.compare(cells([0.7, 0.5]), cells([0.7, 0.5, 0.6]))
