"""Re-run one method x task of a committed benchmark run from scratch and compare every value with the committed one.

    FUNDUS_DATA=../shared/data python bench/reproduce_cell.py cpu --method random --task retinamnist

The run goes to a fresh folder (default ../fundus_ssl_runs/reproduce_<scale>_<method>_<task>): the method is
pretrained there again when it is not random init, with the committed split file and seeds, then the task's cells
are computed and compared, value by value, with results/<scale>/cells/<task>/<method>.csv. The comparison is
written to results/<scale>/reproduced/<task>_<method>.json (and printed): the largest absolute difference, and
how many values agree to the printed precision (3 decimals).
"""
import argparse, json, shutil, subprocess, sys, time
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
KEYS = ['method', 'task', 'fraction', 'seed', 'metric']

def compare(committed:pd.DataFrame, rerun:pd.DataFrame, decimals:int=3) -> dict:
    "Value-by-value comparison of two cell tables (joined on method, task, fraction, seed, metric)."
    both = committed.merge(rerun, on=KEYS, how='outer', suffixes=('_committed', '_rerun'), indicator=True)
    missing = both[both._merge != 'both']
    if len(missing):
        raise ValueError(f'the re-run and the committed cells differ in their rows: {missing[KEYS + ["_merge"]].to_dict("records")[:5]}')
    diff = (both.value_committed - both.value_rerun).abs()
    same = (both.value_committed.round(decimals) == both.value_rerun.round(decimals))
    return dict(n_values=len(both), max_abs_diff=float(diff.max()), agree_to_printed_precision=int(same.sum()),
                decimals=decimals, worst=both.loc[diff.idxmax(), KEYS + ['value_committed', 'value_rerun']].to_dict())

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('scale', choices=['smoke', 'cpu', 'gpu'])
    ap.add_argument('--method', required=True); ap.add_argument('--task', required=True)
    ap.add_argument('--out', default=None, help='a fresh out_dir (default: ../fundus_ssl_runs/reproduce_<scale>_<method>_<task>)')
    a = ap.parse_args(argv)
    results = ROOT/'results'/a.scale
    committed_file = results/'cells'/a.task/f'{a.method}.csv'
    if not committed_file.exists(): sys.exit(f'{committed_file}: no committed cells for method {a.method!r} and task {a.task!r}')
    out = Path(a.out or ROOT.parent/'fundus_ssl_runs'/f'reproduce_{a.scale}_{a.method}_{a.task}').resolve()
    if out.exists(): shutil.rmtree(out)
    methods = ','.join(dict.fromkeys(['random', a.method]))
    t0 = time.time()
    p = subprocess.run([sys.executable, '-m', 'papermill', '-k', 'python3', '--cwd', str(ROOT/'nbs'), str(ROOT/'nbs'/'run_benchmark.ipynb'),
                        str(out.with_suffix('.ipynb')), '-p', 'scale', a.scale, '-p', 'out_dir', str(out), '-p', 'methods', methods,
                        '-p', 'tasks', a.task, '-p', 'stages', 'pretrain,downstream'], cwd=ROOT)
    if p.returncode: sys.exit(f'the re-run failed (exit {p.returncode}); see {out.with_suffix(".ipynb")}')
    res = compare(pd.read_csv(committed_file), pd.read_csv(out/'cells'/a.task/f'{a.method}.csv'))
    res |= dict(scale=a.scale, method=a.method, task=a.task, seconds=round(time.time() - t0, 1), date=time.strftime('%Y-%m-%d'),
                commit=subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    dest = results/'reproduced'/f'{a.task}_{a.method}.json'; dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0

if __name__ == '__main__': sys.exit(main())
