"Run an experiment notebook (`nbs/run_*.ipynb`) under papermill as a user would, into a test's folder."
from pathlib import Path
import pytest

NBS = Path(__file__).parents[1]/'nbs'

def run_experiment(name:str, out:Path, notebook:Path|None=None, **params) -> Path:
    "Execute `nbs/{name}.ipynb` with `params` and `out_dir=out`; the executed copy lands in `notebook` (default: in `out`)."
    papermill = pytest.importorskip('papermill')
    papermill.execute_notebook(str(NBS/f'{name}.ipynb'), str(notebook or out/f'{name}.ipynb'), kernel_name='python3',
                               progress_bar=False, cwd=str(NBS), parameters=dict(params, out_dir=str(out)))
    return out

def experiment_error(name:str, out:Path, notebook:Path, **params) -> str:
    "Run an experiment that must fail; its error as 'ErrorType: message'."
    papermill = pytest.importorskip('papermill')
    with pytest.raises(papermill.PapermillExecutionError) as e: run_experiment(name, out, notebook, **params)
    return f'{e.value.ename}: {e.value.evalue}'

def snapshot(folder:Path) -> dict:
    "Every file under `folder` (executed notebooks aside) with its size and modification time."
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob('*')) if p.is_file() and p.suffix != '.ipynb'}
