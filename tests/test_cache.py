"Pre-resized cache: a run killed with SIGKILL resumes, a worker pool gives the same copies, refusals, real data."
import os, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest
from fundus_ssl.core import fundus_data_root
from fundus_ssl.cache import build_cache, read_manifest, CacheSettingsError
from fundus_ssl.datasets import read_eyepacs, read_drive
from fundus_ssl.io import read_image
from fundus_ssl.synthetic import write_eyepacs_like


@pytest.fixture(scope='module')
def eyepacs(tmp_path_factory):
    return read_eyepacs(write_eyepacs_like(tmp_path_factory.mktemp('data')/'EyePACS', n_patients=30, size=192, seed=1))


def wait_for(path, proc, hang=600):
    "Wait until `path` exists; fail if `proc` exits first. `hang` only guards against a hung child (the wait is"
    "normally a few seconds; 600 s is far beyond any load), it is not a timing assertion."
    deadline = time.monotonic() + hang
    while not path.exists():
        if proc.poll() is not None: pytest.fail(f'the child exited ({proc.returncode}) before {path.name} appeared')
        if time.monotonic() > deadline: pytest.fail(f'{path.name} did not appear in {hang} s: the child hangs')
        time.sleep(0.02)


def test_killed_run_resumes(eyepacs, tmp_path):
    "SIGKILL a run midway: complete copies are kept, the next run makes only the rest, every copy decodes."
    eyepacs.to_pickle(tmp_path/'df.pkl')
    cache, ready = tmp_path/'cache', tmp_path/'ready'
    # The 11th copy stops halfway (a .part written) and waits to be killed: the kill lands after exactly 10
    # copies however fast or busy the machine is (no race between the copies and the kill).
    script = textwrap.dedent(f'''
        import pandas as pd, time
        from pathlib import Path
        import fundus_ssl.cache as c
        slow, calls = c.cache_image, []
        def cache_image(source, dest, *a):
            calls.append(source)
            if len(calls) == 11:
                Path(str(dest) + '.part').write_bytes(b'half a JPEG')
                Path({str(ready)!r}).touch()
                time.sleep(3600)
            return slow(source, dest, *a)
        c.cache_image = cache_image
        c.build_cache(pd.read_pickle({str(tmp_path/"df.pkl")!r}), {str(cache)!r}, size=96, progress=False)
    ''')
    proc = subprocess.Popen([sys.executable, '-c', script])
    try: wait_for(ready, proc)
    finally: proc.kill(); proc.wait()
    assert len(list((cache/'images').glob('*.part'))) == 1
    done = len(read_manifest(cache))
    assert done == 10, f'the kill should land after 10 copies, {done} of {len(eyepacs)} done'
    with open(cache/'manifest.csv', 'a') as f: f.write('/half/written/row.jpeg,123')   # a row cut short by the kill
    out = build_cache(eyepacs, cache, size=96, progress=False)
    assert out.attrs['cache']['new'] == len(eyepacs) - done and out.attrs['cache']['reused'] == done
    assert not list((cache/'images').glob('*.part'))
    assert all(min(read_image(p).shape[:2]) == 96 for p in out.image)
    assert build_cache(eyepacs, cache, size=96, progress=False).attrs['cache']['new'] == 0


def test_worker_pool_same_copies(eyepacs, tmp_path):
    one = build_cache(eyepacs, tmp_path/'one', size=80, progress=False)
    pool = build_cache(eyepacs, tmp_path/'pool', size=80, n_workers=2, progress=False)
    assert pool.attrs['cache']['new'] == len(eyepacs)
    for a, b in zip(one.image, pool.image): np.testing.assert_array_equal(read_image(a), read_image(b))
    m = read_manifest(tmp_path/'pool')
    assert list(m.source) == [str(Path(p).absolute()) for p in eyepacs.image]    # rows in the DataFrame's order


def test_refuses_other_settings(eyepacs, tmp_path):
    build_cache(eyepacs.iloc[:2], tmp_path/'c', size=64, format='png', progress=False)
    with pytest.raises(CacheSettingsError, match=f"{tmp_path/'c'}.*format: built with 'png', asked 'jpg'"):
        build_cache(eyepacs.iloc[:2], tmp_path/'c', size=64, progress=False)
    with pytest.raises(CacheSettingsError, match='fov_crop: built with True, asked False'):
        build_cache(eyepacs.iloc[:2], tmp_path/'c', size=64, format='png', fov_crop=False, progress=False)


def test_drive_with_fov_masks(tmp_path):
    root = fundus_data_root('DRIVE')
    if root is None: pytest.skip('FUNDUS_DATA not set: no DRIVE copy')
    df = read_drive(root)
    df = df[df.split == 'test'].iloc[:4]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = build_cache(df, tmp_path/'drive', size=512, progress=False)
    shapes = [read_image(p).shape for p in out.image]
    assert all(min(s[:2]) == 512 for s in shapes)                     # 565 x 584 cropped to the FOV box, then 512
    assert all(max(s[:2]) < 584 for s in shapes)
