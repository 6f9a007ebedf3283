"""bench/run.py --smoke: every section of the gpu config runs (on the CPU here) and writes positive, finite figures; the cpu config
runs its step section (fp32, CPU-time ratios). Its other sections run the same code as the gpu config's on a CPU, so they are
skipped here to keep the test under a minute."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest
from hang_guard import communicate, run

RUN = Path(__file__).parents[1]/'bench'/'run.py'
SECTIONS = dict(gpu=('steps', 'switches', 'data', 'epoch_start_ms', 'segmentation', 'end_to_end'), cpu=('steps',))
SKIP = dict(gpu=[], cpu=['switches', 'data', 'seg'])
NOT_ON_CPU = {'gpu_busy_share', 'peak_bf16_tflops', 'bound_images_s', 'fraction_of_bound'}   # None without a GPU


@pytest.fixture(scope='module')
def results(tmp_path_factory) -> dict:
    "Both smoke runs, side by side (each uses one thread), config -> its JSON."
    out = tmp_path_factory.mktemp('bench')
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    procs = {c: subprocess.Popen([sys.executable, str(RUN), c, '--smoke', '--out', str(out), '--skip', *SKIP[c]], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True) for c in SECTIONS}
    logs = {c: communicate(p, f'bench/run.py {c} --smoke')[0] for c, p in procs.items()}
    for c, p in procs.items(): assert p.returncode == 0, f'bench/run.py {c} --smoke failed:\n{logs[c][-3000:]}'
    return {c: json.loads((out/f'{c}-smoke.json').read_text()) for c in SECTIONS}


def numbers(d, path=''):
    "(path, value) of every number in a nested JSON value (bools excluded)."
    if isinstance(d, dict):
        for k, v in d.items(): yield from numbers(v, f'{path}.{k}')
    elif isinstance(d, list):
        for i, v in enumerate(d): yield from numbers(v, f'{path}[{i}]')
    elif isinstance(d, (int, float)) and not isinstance(d, bool): yield path, d


@pytest.mark.parametrize('config', list(SECTIONS))
def test_every_section_positive_and_finite(results, config):
    r = results[config]
    assert r['name'] == f'{config}-smoke' and r['config']['encoder'] == 'test_resnet'
    for s in SECTIONS[config]:
        found = list(numbers(r[s], s))
        assert found, s
        bad = [(p, v) for p, v in found if not (math.isfinite(v) and v > 0)]
        assert not bad, bad


@pytest.mark.parametrize('config', list(SECTIONS))
def test_ratio_per_method(results, config):
    steps, cpu = results[config]['steps'], results[config]['config']['device'] == 'cpu'
    assert set(steps) == {'moco', 'byol', 'simclr', 'barlow_twins', 'vicreg', 'dino', 'swcl'}
    for m, v in steps.items():
        lo, hi = v['step_ratio_interval']
        assert 0 < lo <= hi and 0.2 < v['step_ratio_callback_vs_plain'] < 5, (m, v)
        assert len(v['callback_steps_ms']) == len(v['plain_steps_ms']) == results[config]['config']['repeats']
        assert ('step_ratio_cpu_time' in v) == cpu, m
        # the plain loop computes what the callback does: the same first loss from the same weights
        assert math.isclose(v['first_loss_callback'], v['first_loss_plain'], rel_tol=1e-2 if results[config]['config']['bf16'] else 1e-4), m


def test_end_to_end_on_a_cpu(results):
    e = results['gpu']['end_to_end']
    assert e['workers'] == 1 and e['images_s'] > 0
    if e['device'] == 'CPU':
        assert all(e[k] is None for k in NOT_ON_CPU) and 'no GPU' in e['gpu_busy_share_note']
    assert not {'end_to_end', 'switches', 'data', 'segmentation'} & set(results['cpu'])


def test_epoch_start_prints_both_loaders():
    "bench/epoch_start.py, shrunk: one resident size, one worker, one timed epoch; a row of two positive times."
    script = RUN.parent/'epoch_start.py'
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    out = run([sys.executable, str(script), '--resident-gb', '0', '--workers', '1', '--epochs', '1'], 'bench/epoch_start.py', env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [l.split('|')[1:-1] for l in out.stdout.splitlines() if l.startswith('| 0 |')]
    assert len(rows) == 1 and all(float(v) > 0 for v in rows[0][1:]), out.stdout
