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

# The notebooks whose parameters cells declare types (`name: type = default  # help`); the others follow.
TYPED = [NBS/f'{n}.ipynb' for n in ('run_transfer', 'run_robustness', 'run_benchmark', 'run_pretrain', 'run_swcl')]

def _fits(value, tp) -> bool:
    "Whether a default value is of an annotated type (builtins, their generics, Optional and Union)."
    import typing
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union: return any(_fits(value, a) for a in args)
    if tp is type(None): return value is None
    if tp is float: return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int: return isinstance(value, int) and not isinstance(value, bool)
    if origin is list: return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict: return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return isinstance(value, tp)

def _typed_cell(path):
    "The parameters cell's values and evaluated annotations, run after the cell before it (the `typing` import)."
    cells = json.loads(path.read_text())['cells']
    i = next(i for i, c in enumerate(cells) if 'parameters' in c['metadata'].get('tags', []))
    ns = {}
    exec(''.join(cells[i - 1]['source']), ns); exec(''.join(cells[i]['source']), ns)
    return ns, ns['__annotations__'], ''.join(cells[i]['source'])

def test_fits():
    import typing
    assert _fits(None, typing.Optional[str]) and _fits(2, float) and _fits({'a': [0.5]}, dict[str, list[float]])
    assert not _fits(True, int) and not _fits('a', list[str]) and not _fits([1.5], list[int])

@pytest.mark.parametrize('path', TYPED, ids=lambda p: p.stem)
def test_parameters_are_typed(path):
    "Every parameter has a type that its default fits, and papermill's help shows it (no 'Unknown type', no line left out for `|`)."
    ns, types, source = _typed_cell(path)
    assert set(types) == set(declared(path)), set(declared(path)) - set(types)
    for name, tp in types.items(): assert _fits(ns[name], tp), f'{path.stem}: {name} = {ns[name]!r} is not a {tp}'
    assert '|' not in ''.join(l.split('#')[0] for l in source.splitlines()), 'papermill leaves out an annotation with `|`: use Optional/Union'
    papermill = pytest.importorskip('papermill')
    listed = papermill.inspect_notebook(str(path))
    assert all(p['inferred_type_name'] not in ('None', 'Unknown type') for p in listed.values()), listed
