"The parameters of the experiment notebooks: papermill lists them, the GPU files set only declared ones, and no import clobbers one."
import json
from pathlib import Path
import pytest
import yaml

from fundus_ssl.runs import assigned_names
import fundus_ssl.core, fundus_ssl.runs

NBS = Path(__file__).parents[1]/'nbs'
RUNS = [NBS/f'{n}.ipynb' for n in ('run_pretrain', 'run_swcl', 'run_transfer', 'run_robustness', 'run_benchmark')]

def declared(path):
    cell = next(c for c in json.loads(path.read_text())['cells'] if 'parameters' in c['metadata'].get('tags', []))
    return assigned_names(''.join(cell['source']))

@pytest.mark.parametrize('path', RUNS, ids=lambda p: p.stem)
def test_papermill_lists_the_parameters(path):
    papermill = pytest.importorskip('papermill')
    listed = list(papermill.inspect_notebook(str(path)))
    # papermill skips a line with two '=' (a value like 'dr_grade >= 2'); every other parameter is listed, in order
    assert listed == [n for n in declared(path) if n in listed] and len(listed) >= len(declared(path)) - 2
    assert {'out_dir', 'overwrite'} <= set(listed)

@pytest.mark.parametrize('path', RUNS, ids=lambda p: p.stem)
def test_gpu_parameters_are_declared(path):
    gpu = NBS/'params'/'gpu'/f'{path.stem}.yaml'
    assert set(yaml.safe_load(gpu.read_text())) <= set(declared(path)), set(yaml.safe_load(gpu.read_text())) - set(declared(path))

@pytest.mark.parametrize('path', RUNS, ids=lambda p: p.stem)
def test_no_import_replaces_a_parameter(path):
    "The notebooks star-import fundus_ssl.runs and fundus_ssl.core after their parameters: no exported name may be a parameter's."
    assert not set(declared(path)) & (set(fundus_ssl.core.__all__) | set(fundus_ssl.runs.__all__))

@pytest.mark.parametrize('path', RUNS, ids=lambda p: p.stem)
def test_parameters_are_checked_first(path):
    "The first cell after the parameters reads them (an unknown name fails there), checks every one and prepares out_dir."
    cells = json.loads(path.read_text())['cells']
    i = next(i for i, c in enumerate(cells) if 'parameters' in c['metadata'].get('tags', []))
    first = ''.join(cells[i + 1]['source'])
    for call in ('notebook_parameters()', 'check_parameters(params', 'prepare_out_dir(out_dir'): assert call in first, call
