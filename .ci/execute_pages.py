"""Execute notebooks for the docs site, so that a reader sees what each one produces before running it.

The experiments (`nbs/run_*.ipynb`, documented with no outputs of their own) are run with papermill at the
parameters in `COPIES` into executed copies, `nbs/executed/<name>.ipynb`, which the docs builder shows under the
notebook's own code and prose (`.ci/build_docs.py`). Any other notebook named is executed in place, as
`nbdev_test` executes it: its outputs are refreshed, its code and prose left as they are (nbdev keeps outputs:
`clear_all = False` in settings.ini).

    python .ci/execute_pages.py run_swcl run_pretrain       # these copies (or notebooks in place)
    python .ci/execute_pages.py --copies                    # every executed copy
    python .ci/execute_pages.py run_benchmark --benchmark-dir RUN   # the report stage of a finished benchmark run

Each executed copy is papermill's notebook, PNG images re-encoded as JPEG (much smaller), cleaned as
`nbdev_clean` cleans, with a Markdown note (tagged `executed-note`) after its title: the parameters, machine,
date and commit of the run, and one at its end (tagged `executed-metrics`) with the run's `metrics.json` as
tables. tests/test_docs_site.py fails when a copy's code no longer matches its notebook's.
"""
import argparse, base64, io, json, os, platform, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, EXECUTED = ROOT/'nbs', ROOT/'nbs'/'executed'
NOTE_TAG, METRICS_TAG = 'executed-note', 'executed-metrics'  # cells this script adds (build_docs.py reads them)

# The parameters of each executed copy (over the notebook's defaults); out_dir is a temporary folder.
COPIES = {
    'run_swcl': {},          # the main command's run: the defaults, synthetic data
    'run_pretrain': {},      # MoCo v2 on 200 synthetic images at 64 px, 15 epochs
    'run_transfer': {},      # random init against a 5-epoch MoCo v2 encoder, every protocol and the sweeps
    'run_robustness': {},    # random init against MoCo v2 (ResNet-18, 64 px), ten distortions at five severities
    # the report stage of a finished `cpu`-scale benchmark run (--benchmark-dir), on its real-data results
    'run_benchmark': dict(scale='cpu', stages='report'),
}
BENCHMARK_RESULTS = ('cells', 'curves', 'robustness', 'pool.csv', 'stages.json', 'run.json')  # what the report stage reads

def git(*args) -> str:
    return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

def machine() -> str:
    "The machine in words: CPU cores and, where there is one, the GPU."
    import torch
    gpu = f', GPU {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else ', no GPU'
    return f'{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores{gpu}'

def jpeg_images(nb:dict, quality:int=85) -> dict:
    "PNG outputs re-encoded as JPEG where that is smaller (figures at a tenth of the size)."
    from PIL import Image
    for c in nb['cells']:
        for o in c.get('outputs', []):
            png = o.get('data', {}).get('image/png')
            if not png: continue
            raw = base64.b64decode(''.join(png) if isinstance(png, list) else png)
            im = Image.open(io.BytesIO(raw))
            if im.mode in ('RGBA', 'LA', 'P'):
                im = im.convert('RGBA'); bg = Image.new('RGB', im.size, 'white'); bg.paste(im, mask=im.split()[-1]); im = bg
            buf = io.BytesIO(); im.convert('RGB').save(buf, 'JPEG', quality=quality, optimize=True)
            if buf.tell() < len(raw):
                del o['data']['image/png']; o['data']['image/jpeg'] = base64.b64encode(buf.getvalue()).decode()
    return nb

def portable(nb:dict, out_dir:Path|None=None, other_run:Path|None=None) -> dict:
    "No empty `tags` (papermill adds them; nbdev_clean keeps them), no path of this checkout or of the temporary"
    "out_dir in the outputs (`OUT_DIR` stands for it; `RUN_DIR` for a finished run's folder that it read), and a"
    "warning repeated word for word shown once."
    subs = [(str(ROOT) + '/', ''), (str(ROOT), '.')] + ([(str(out_dir), 'OUT_DIR')] if out_dir else [])
    subs += [(str(other_run.resolve()), 'RUN_DIR'), (str(other_run), 'RUN_DIR')] if other_run else []
    def fix(x):
        if isinstance(x, list): return [fix(t) for t in x]
        for a, b in subs: x = x.replace(a, b)
        return x
    seen = set()
    for c in nb['cells']:
        if c.get('metadata', {}).get('tags') == []: del c['metadata']['tags']
        if c['cell_type'] == 'markdown' or 'injected-parameters' in c.get('metadata', {}).get('tags', []): c['source'] = fix(c['source'])
        if c['cell_type'] == 'markdown': continue
        outs = []
        for o in c.get('outputs', []):
            if 'text' in o: o['text'] = fix(o['text'])
            for mime in ('text/plain', 'text/html', 'text/markdown'):
                if mime in o.get('data', {}): o['data'][mime] = fix(o['data'][mime])
            if o.get('name') == 'stderr':
                if (t := ''.join(o['text'])) in seen: continue
                seen.add(t)
            outs.append(o)
        if 'outputs' in c: c['outputs'] = outs
    return nb

def clean(path:Path):
    "Clean `path` as nbdev_clean cleans the notebooks (CI checks that it changes nothing)."
    subprocess.run([str(Path(sys.executable).parent/'nbdev_clean'), '--fname', str(path)], cwd=ROOT, check=True)

def execute(src:Path, dst:Path, params:dict|None=None, out_dir:Path|None=None) -> float:
    "Run `src` with papermill (cwd nbs/, as the tests run it) into `dst`; seconds taken. Raises on a failing cell."
    import papermill
    t0 = time.time()
    papermill.execute_notebook(str(src), str(dst), parameters=dict(params or {}, **({'out_dir': str(out_dir)} if out_dir else {})),
                               kernel_name='python3', cwd=str(NBS), progress_bar=False)
    return time.time() - t0

def source_commit(name:str) -> str:
    "The commit the notebook is run from, and whether it has changes not committed yet."
    dirty = git('status', '--porcelain', '--', f'nbs/{name}.ipynb')
    return git('rev-parse', '--short', 'HEAD') + (f' (with uncommitted changes to `nbs/{name}.ipynb`)' if dirty else '')

def note(name:str, params:dict, seconds:float, commit:str, extra:str='') -> dict:
    "The Markdown cell that says how the outputs below were made."
    shown = ', '.join(f'`{k}={v!r}`' for k, v in params.items()) or 'its default parameters'
    src = (f'Outputs below are from an executed run of this notebook with {shown}, on {machine()}, '
           f'{time.strftime("%Y-%m-%d", time.gmtime())}, commit {commit}: {seconds / 60:.1f} minutes. {extra}'
           f'`python .ci/execute_pages.py {name}{" --benchmark-dir RUN_DIR" if name == "run_benchmark" else ""}` remakes this copy '
           f'(`nbs/executed/{name}.ipynb`).')
    return dict(cell_type='markdown', metadata=dict(tags=[NOTE_TAG]), source=src.strip())

def _fmt(v) -> str:
    if isinstance(v, dict) and set(v) == {'value', 'low', 'high'}:
        return '' if v['value'] is None else f"{_fmt(v['value'])} [{_fmt(v['low'])}, {_fmt(v['high'])}]"
    if isinstance(v, float): return f'{v:.4g}'
    if isinstance(v, list) and len(v) > 8: return _fmt(v[:8])[:-1] + f', ... ({len(v)} values)]'
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

def _flat(d, prefix='') -> list:
    "(key path, value) rows of a nested dict; an interval {value, low, high} is one value."
    if not isinstance(d, dict) or set(d) == {'value', 'low', 'high'}: return [(prefix, d)]
    return [row for k, v in d.items() for row in _flat(v, f'{prefix}.{k}' if prefix else str(k))] or [(prefix, {})]

def metrics_table(block, max_rows:int=40) -> str:
    "A Markdown table of one block of metrics.json: names x metrics for a dict of dicts with the same keys, else key | value."
    cell = lambda t: str(t).replace('|', '\\|').replace('\n', ' ')
    inner = [v for v in block.values()] if isinstance(block, dict) else []
    if inner and all(isinstance(v, dict) and v and set(v) == set(inner[0]) and all(not isinstance(x, dict) or set(x) == {'value', 'low', 'high'}
                                                                          for x in v.values()) for v in inner):
        cols = list(dict.fromkeys(c for v in block.values() for c in v))
        rows = ['| | ' + ' | '.join(f'`{c}`' for c in cols) + ' |', '|---|' + '---|' * len(cols)]
        rows += [f'| `{k}` | ' + ' | '.join(cell(_fmt(v[c])) if c in v else '' for c in cols) + ' |' for k, v in block.items()]
        return '\n'.join(rows)
    flat = _flat(block)
    rows = ['| | value |', '|---|---|'] + [f'| `{k or "value"}` | {cell(_fmt(v))} |' for k, v in flat[:max_rows]]
    return '\n'.join(rows) + (f'\n\n({len(flat) - max_rows} more values in the file)' if len(flat) > max_rows else '')

def metrics_cell(path:Path) -> dict:
    "The Markdown cell of the run's metrics.json: its single values in one table, then a table per nested entry."
    m = json.loads(path.read_text())
    parts = [f'## The run\'s `metrics.json`\n\nWhat this run wrote to `{path.name}` (95% intervals as value [low, high]):']
    single = {k: v for k, v in m.items() if not isinstance(v, dict)}
    if single: parts.append(metrics_table(single))
    parts += [f'**`{k}`**\n\n{metrics_table(v)}' for k, v in m.items() if isinstance(v, dict)]
    return dict(cell_type='markdown', metadata=dict(tags=[METRICS_TAG]), source='\n\n'.join(parts))

def benchmark_out(run:Path, tmp:Path) -> tuple[Path, dict, str]:
    "A copy of a finished benchmark run's results (encoders linked, not copied) to run its report stage on."
    if not (run/'cells').is_dir(): raise FileNotFoundError(f'--benchmark-dir {run}: no cells/ folder (run the downstream stage first)')
    out = tmp/'benchmark'; out.mkdir()
    for name in BENCHMARK_RESULTS:
        if (run/name).is_dir(): shutil.copytree(run/name, out/name)
        elif (run/name).exists(): shutil.copy(run/name, out/name)
    for m in sorted((run/'pretrain').glob('*/metrics.json')):
        (out/'pretrain'/m.parent.name).mkdir(parents=True)
        for f in m.parent.glob('*'):
            if f.is_file(): (out/'pretrain'/m.parent.name/f.name).symlink_to(f.resolve())
    stages = json.loads((run/'stages.json').read_text())
    methods = sorted({p.stem for p in (run/'cells').glob('*/*.csv')}, key=lambda m: (m != 'random', m))
    tasks = sorted({p.parent.name for p in (run/'cells').glob('*/*.csv')} & {'eyediseases4class', 'odir', 'retinamnist', 'drive', 'drions'})
    done = sorted(v['finished'][:10] for k, v in stages.items() if k != 'report' and v.get('ok'))
    when = f'on {done[0]}' if done[0] == done[-1] else f'from {done[0]} to {done[-1]}'
    extra = (f'The report stage only: it read the results of the pretraining and downstream stages of that scale, run on the same '
             f'machine {when} ({len(methods)} initialisations; downstream tasks run so far: {", ".join(tasks)}). ')
    return out, dict(methods=','.join(methods), tasks=','.join(tasks)), extra

def executed_copy(name:str, benchmark_dir:Path|None=None):
    EXECUTED.mkdir(exist_ok=True)
    params, extra = dict(COPIES[name]), ''
    with tempfile.TemporaryDirectory(prefix='fundus_ssl_docs_') as tmp:
        tmp = Path(tmp)
        if name == 'run_benchmark':
            if benchmark_dir is None: raise SystemExit('run_benchmark: give --benchmark-dir, the out_dir of a finished cpu-scale benchmark run')
            out, more, extra = benchmark_out(benchmark_dir, tmp); params.update(more)
        else: out = tmp/name
        dst = tmp/f'{name}.ipynb'
        commit = source_commit(name)
        seconds = execute(NBS/f'{name}.ipynb', dst, params, out)
        nb = jpeg_images(json.loads(dst.read_text()))
        nb['cells'].insert(1, note(name, params, seconds, commit, extra))
        if (out/'metrics.json').exists(): nb['cells'].append(metrics_cell(out/'metrics.json'))
        else: raise FileNotFoundError(f'{name}: the run wrote no metrics.json in its out_dir')
        nb = portable(nb, out, benchmark_dir if name == 'run_benchmark' else None)
        dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
        clean(dst)
        shutil.copy(dst, EXECUTED/f'{name}.ipynb')
    print(f'{name}: {seconds:.0f} s; nbs/executed/{name}.ipynb {(EXECUTED/f"{name}.ipynb").stat().st_size / 1e6:.2f} MB')

def _run_like_nbdev_test(src:Path, dst:Path):
    "Execute `src` as nbdev_test does (in its folder, IN_TEST set, cells flagged `slow` or `eval: false` not run:"
    "they keep the outputs they had) and write it with its outputs to `dst`."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from nbdev.config import get_config
    flags = set(get_config().tst_flags.split())
    def skip(cell):
        if cell.cell_type != 'code' or 'nbdev_export' + '(' in cell.source: return True
        opts = {l[2:].split(':')[0].strip(): l[2:].partition(':')[2].strip() for l in cell.source.splitlines() if l.startswith('#|')}
        return opts.get('eval', '').lower() == 'false' or bool(flags & set(opts))
    os.environ['IN_TEST'] = '1'
    nb = read_nb(src)
    os.chdir(src.parent)
    CaptureShell(src, mpl_format='png').run_all(nb, exc_stop=True, preproc=skip)
    write_nb(nb, dst)

def in_place(name:str):
    "Execute `nbs/<name>.ipynb` as nbdev_test does and keep its new outputs (its cells are not changed: checked)."
    src = NBS/f'{name}.ipynb'
    with tempfile.TemporaryDirectory(prefix='fundus_ssl_docs_') as tmp:
        dst = Path(tmp)/src.name
        t0 = time.time()
        subprocess.run([sys.executable, __file__, '--worker', str(src), str(dst)], check=True)  # a fresh process per notebook
        seconds = time.time() - t0
        dst.write_text(json.dumps(portable(jpeg_images(json.loads(dst.read_text()))), indent=1, ensure_ascii=False))
        clean(dst)
        before, after = json.loads(src.read_text()), json.loads(dst.read_text())
        strip = lambda nb: [(c['cell_type'], ''.join(c['source'])) for c in nb['cells']]
        if strip(before) != strip(after): raise RuntimeError(f'{src}: executing it changed its cells, not only the outputs')
        shutil.copy(dst, src)
    print(f'{name}: executed in place in {seconds:.0f} s; {src.stat().st_size / 1e6:.2f} MB')

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('names', nargs='*', help='notebooks (stems): an executed copy for those in COPIES, in place for the others')
    ap.add_argument('--copies', action='store_true', help='every executed copy')
    ap.add_argument('--benchmark-dir', type=Path, help="a finished cpu-scale run_benchmark out_dir (for run_benchmark's copy)")
    ap.add_argument('--worker', nargs=2, type=Path, help=argparse.SUPPRESS)  # in_place's process: SRC DST
    args = ap.parse_args()
    if args.worker: _run_like_nbdev_test(*args.worker); sys.exit()
    names = [*(COPIES if args.copies else []), *args.names]
    if not names: ap.error('name notebooks, or --copies')
    if 'run_benchmark' in names and args.benchmark_dir is None:
        if 'run_benchmark' in args.names: ap.error('run_benchmark: give --benchmark-dir, the out_dir of a finished cpu-scale benchmark run')
        print('run_benchmark: skipped (no --benchmark-dir)'); names.remove('run_benchmark')
    for name in names:
        if not (NBS/f'{name}.ipynb').exists(): ap.error(f'nbs/{name}.ipynb does not exist')
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    for name in names:
        if name in COPIES: executed_copy(name, args.benchmark_dir)
        else: in_place(name)
