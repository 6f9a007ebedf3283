"""Run nbs/run_benchmark.ipynb stage by stage, committing each finished stage's small results.

    FUNDUS_DATA=../shared/data python bench/benchmark_stages.py cpu [--out ../fundus_ssl_runs/bench_cpu] [--no-commit]

Stages, in order: the pretraining of each method, the downstream cells of each task, the report. Each runs as
its own papermill call of the notebook (which skips what an earlier call finished), then its small files
(metrics, losses, per-cell CSVs, figures; never weights or data) are copied into results/<scale>/ and committed,
so a stop at any point loses at most the stage in progress. Run it again to continue.
"""
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ['random', 'supervised', 'mocov2', 'mocov2_local_decorr', 'byol', 'swcl']
TASKS = ['eyediseases4class', 'odir', 'retinamnist', 'drive', 'drions']

def stages(methods, tasks) -> list:
    "(name, papermill parameters) of every stage, in order."
    return ([(f'pretrain {m}', dict(stages='pretrain', methods=','.join(dict.fromkeys(['random', m])))) for m in methods if m != 'random']
            + [(f'downstream {t}', dict(stages='downstream', tasks=t, methods=','.join(methods))) for t in tasks]
            + [('report', dict(stages='report', methods=','.join(methods), tasks=','.join(tasks)))])

def small_files(out:Path) -> list:
    "The result files worth keeping: JSON and CSV of the pretraining and the cells, the report's files and figures."
    keep = [*out.glob('pretrain/*/metrics.json'), *out.glob('pretrain/*/losses.json'), *out.glob('cells/*/*.csv'), *out.glob('robustness/*.csv'),
            *out.glob('curves/*/*.csv'), *[out/n for n in ('cells.csv', 'summary.csv', 'claims.csv', 'claims_numbers.csv', 'findings.md', 'metrics.json')], *out.glob('*.png')]
    return [f for f in keep if f.exists() and f.stat().st_size < 2_000_000]

def copy_results(out:Path, dest:Path) -> list:
    copied = []
    for f in small_files(out):
        target = dest/f.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target); copied.append(target)
    return copied

def commit(dest:Path, message:str, tries:int=10):
    "Commit the results folder alone (other work in the tree is left as it is), retrying while git's index is locked."
    for _ in range(tries):
        add = subprocess.run(['git', 'add', str(dest)], cwd=ROOT, capture_output=True, text=True)
        if add.returncode == 0:
            c = subprocess.run(['git', 'commit', '-q', '-m', message, '--', str(dest)], cwd=ROOT, capture_output=True, text=True)
            if c.returncode == 0 or 'nothing' in c.stdout + c.stderr: return
        time.sleep(3)
    print(f'could not commit {dest}: {add.stderr or c.stderr}', flush=True)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('scale', choices=['smoke', 'cpu', 'gpu'])
    ap.add_argument('--out', default=None, help='out_dir of the notebook (default: ../fundus_ssl_runs/bench_<scale>)')
    ap.add_argument('--methods', default=','.join(METHODS)); ap.add_argument('--tasks', default=','.join(TASKS))
    ap.add_argument('--no-commit', action='store_true', help='copy the results but do not commit them')
    a = ap.parse_args(argv)
    out = Path(a.out or ROOT.parent/'fundus_ssl_runs'/f'bench_{a.scale}').resolve()
    dest = ROOT/'results'/a.scale
    log = out/'stages.json'; out.mkdir(parents=True, exist_ok=True)
    done = json.loads(log.read_text()) if log.exists() else {}
    for name, params in stages(a.methods.split(','), a.tasks.split(',')):
        rec = done.get(name, {})
        ran = set(rec.get('methods', params['methods']).split(','))   # stages recorded before methods were kept ran them all
        if rec.get('ok') and name != 'report' and set(params['methods'].split(',')) <= ran: print(f'{name}: done'); continue
        t0 = time.time()
        commit_id = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # the code this stage ran
        args = [sys.executable, '-m', 'papermill', '-k', 'python3', '--cwd', str(ROOT/'nbs'), str(ROOT/'nbs'/'run_benchmark.ipynb'),
                str(out/f"run_{name.replace(' ', '_')}.ipynb"), '-p', 'scale', a.scale, '-p', 'out_dir', str(out)]
        for k, v in params.items(): args += ['-p', k, v]
        if name == 'report': args += ['-p', 'results_dir', str(dest)]
        print(f'{name}: running', flush=True)
        p = subprocess.run(args, cwd=ROOT)
        done[name] = dict(ok=p.returncode == 0, seconds=round(time.time() - t0, 1), finished=time.strftime('%Y-%m-%d %H:%M:%S'), commit=commit_id, methods=params['methods'])
        log.write_text(json.dumps(done, indent=1))
        copied = copy_results(out, dest)
        shutil.copy(log, dest/'stages.json')
        print(f"{name}: {'ok' if p.returncode == 0 else 'FAILED'} in {done[name]['seconds']:.0f} s; {len(copied)} result files", flush=True)
        if not a.no_commit: commit(dest, f'results/{a.scale}: benchmark stage "{name}" ({"ok" if p.returncode == 0 else "failed"}, {done[name]["seconds"]:.0f} s)')
        if p.returncode != 0: return p.returncode
    return 0

if __name__ == '__main__': sys.exit(main())
