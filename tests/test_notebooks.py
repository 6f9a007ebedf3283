"Every notebook can be run by papermill as it is committed: kernel and language named, parameters tagged."
import json
from pathlib import Path
import pytest

NBS = sorted((Path(__file__).parents[1]/'nbs').glob('*.ipynb'))

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_kernelspec_present(path):
    spec = json.loads(path.read_text())['metadata'].get('kernelspec', {})
    assert spec.get('name') == 'python3' and spec.get('language') == 'python', \
        f"{path.name}: notebook metadata needs kernelspec name 'python3' and language 'python' (papermill reads it)"

@pytest.mark.parametrize('path', [p for p in NBS if p.name.startswith('run_')], ids=lambda p: p.name)
def test_experiment_has_parameters_cell(path):
    cells = json.loads(path.read_text())['cells']
    tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_description_is_one_line(path):
    "nbdev 2 makes the module docstring of the first `> ` line alone: a description wrapped over two lines is cut."
    lines = ''.join(json.loads(path.read_text())['cells'][0]['source']).splitlines()
    quoted = [i for i, l in enumerate(lines) if l.startswith('>')]
    assert len(quoted) <= 1, f"{path.name}: the '> ' description spans lines {quoted}; write it on one line"
