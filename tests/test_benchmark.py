"The benchmark's committed split file (leak-free, nested, reproducible from the data), its duplicate finding, seed statistics and claim checks."
import warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from PIL import Image
from fundus_ssl.core import fundus_data_root
from fundus_ssl.benchmark import *

SPLITS_CSV = Path(__file__).parents[1]/'nbs'/'params'/'benchmark_splits.csv'


@pytest.fixture(scope='module')
def splits(): return read_benchmark_splits(SPLITS_CSV)


@pytest.fixture(scope='module')
def root():
    r = fundus_data_root()
    if r is None: pytest.skip('set FUNDUS_DATA to the folder of real datasets')
    return r


# ---- the committed split file ---------------------------------------------------------------------------------
def test_split_file_columns_and_sizes(splits):
    assert list(splits.columns) == SPLIT_COLUMNS
    n = splits.groupby('dataset').size().to_dict()
    assert n == {'DRIONS-DB': 109, 'DRIVE': 40, 'EyeDiseases4class': 4000, 'ODIR': 1602, 'RetinaMNIST': 1600, 'STARE': 20}
    assert not splits.duplicated(['dataset', 'image']).any()
    assert set(splits.split) == {'train', 'valid', 'test'}


def test_no_test_group_in_pool_or_train(splits):
    test_groups = set(splits.group[splits.split == 'test'])
    assert not splits.pool[splits.group.isin(test_groups)].any()
    assert (splits.split[splits.group.isin(test_groups)] == 'test').all()  # a group never straddles splits
    # across EyeDiseases4class and ODIR: the pool and both training splits hold no test group
    pooled = splits[splits.dataset.isin(['EyeDiseases4class', 'ODIR'])]
    assert not set(pooled.group[pooled.pool | (pooled.split != 'test')]) & test_groups


def test_pool_only_from_the_pool_datasets(splits):
    assert set(splits.dataset[splits.pool]) == {'EyeDiseases4class'}  # every ODIR image here is a copy of one
    assert (splits.split[splits.pool] != 'test').all()
    assert splits.pool.sum() == 3198


def test_odir_patients_stay_together(splits):
    odir = splits[splits.dataset == 'ODIR']
    patient = odir.image.str.extract(r'(\d+)_(?:left|right)', expand=False)
    assert (odir.groupby(patient).split.nunique() == 1).all()
    ed = splits[splits.dataset == 'EyeDiseases4class']
    ep = ed[ed.image.str.startswith('diabetic_retinopathy/')]
    assert (ep.groupby(ep.image.str.extract(r'/(\d+)_', expand=False)).split.nunique() == 1).all()


def test_fractions_nested_stratified(splits):
    for a, b in (('frac_1', 'frac_10'), ('frac_10', 'frac_100')): assert (splits[a] <= splits[b]).all()
    for name, col in (('EyeDiseases4class', 'label'), ('ODIR', 'label'), ('RetinaMNIST', 'dr_grade')):
        d = splits[splits.dataset == name]
        train = d[d.split == 'train']
        assert (d.frac_100 == (d.split == 'train')).all()
        assert set(train[train.frac_1][col]) == set(train[col])  # at least one per class
        for f in (1, 10):
            got = train[train[f'frac_{f}']].groupby(col).size()
            want = np.maximum(1, np.ceil(train.groupby(col).size() * f / 100)).astype(int)
            assert got.to_dict() == want.to_dict()


def test_segmentation_sets(splits):
    drive = splits[splits.dataset == 'DRIVE']
    assert drive.groupby('split').size().to_dict() == {'test': 20, 'train': 20}
    assert drive[drive.split == 'train'].image.str.startswith('training/').all()
    assert drive.drive_n.value_counts().to_dict() == {20: 15, 5: 4, 1: 1}
    assert drive.drive_n[drive.split == 'test'].isna().all()
    assert (splits.split[splits.dataset == 'STARE'] == 'test').all()
    drions = splits[splits.dataset == 'DRIONS-DB']
    assert (drions.image.str.split('/').str[0] == drions.split).all()


def test_read_errors(tmp_path, splits):
    with pytest.raises(FileNotFoundError, match='no benchmark split file'): read_benchmark_splits(tmp_path/'x.csv')
    splits.drop(columns='group').to_csv(tmp_path/'bad.csv', index=False)
    with pytest.raises(ValueError, match=r"lacks the columns \['group'\]"): read_benchmark_splits(tmp_path/'bad.csv')


def test_write_read_round_trip(tmp_path, splits):
    write_benchmark_splits(splits, tmp_path/'s.csv')
    assert (tmp_path/'s.csv').read_bytes() == SPLITS_CSV.read_bytes()


# ---- real data --------------------------------------------------------------------------------------------------
def test_regenerating_reproduces_the_committed_file(root, tmp_path):
    df = benchmark_splits(root)
    write_benchmark_splits(df, tmp_path/'s.csv')
    assert (tmp_path/'s.csv').read_bytes() == SPLITS_CSV.read_bytes()
    assert df.attrs['n_odir_in_eyediseases'] == 1602


def test_frames_join_the_readers(root, splits):
    for name in BENCHMARK_FOLDERS:
        df = benchmark_frame(splits, root, name)
        assert len(df) == (splits.dataset == name).sum()
    ed = benchmark_frame(splits, root, 'EyeDiseases4class')
    assert Path(ed.image[0]).exists()
    assert len(pool_paths(splits, root)) == 3198
    with pytest.raises(ValueError, match='only one of the data and the split file'):
        benchmark_frame(splits.drop(splits.index[splits.dataset == 'DRIVE'][0]), root, 'DRIVE')


def test_eyediseases_copies_found(root):
    "An augmented copy in EyeDiseases4class (colour, flip) joins its source's group; its ODIR copy shares the split."
    s = read_benchmark_splits(SPLITS_CSV).set_index(['dataset', 'image'])
    g = lambda d, i: s.loc[(d, i), 'group']
    assert g('EyeDiseases4class', 'cataract/_100_334408.jpg') == g('EyeDiseases4class', 'cataract/2151_right.jpg')
    assert g('EyeDiseases4class', 'normal/1034_left.jpg') == g('ODIR', 'preprocessed_images/1034_left.jpg')


# ---- duplicates -------------------------------------------------------------------------------------------------
def _fundus(tmp_path, name, seed, flip=False, gain=(1., 1., 1.), oval=False):
    from fundus_ssl.synthetic import make_fundus
    a = make_fundus(seed, size=128)['image'].astype(float)
    a = np.clip(a[:, ::-1] if flip else a, 0, 255) * gain
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if oval: im = im.resize((96, 128)).resize((128, 128))
    im.save(tmp_path/name)
    return image_signature(tmp_path/name)


def test_near_duplicates_copies_not_others(tmp_path):
    sigs = [_fundus(tmp_path, 'a.png', 1), _fundus(tmp_path, 'b.png', 1, flip=True, gain=(0.8, 1.1, 0.9)),
            _fundus(tmp_path, 'c.png', 2), _fundus(tmp_path, 'd.png', 3), _fundus(tmp_path, 'e.png', 4)]
    pairs = near_duplicates([np.stack(s) for s in zip(*sigs)])
    assert pairs.tolist() == [[0, 1]]
    assert merge_groups(list('abcde'), pairs).tolist() == ['a', 'a', 'c', 'd', 'e']


def test_near_duplicates_chunks_agree(tmp_path):
    rng = np.random.default_rng(0)
    s = rng.standard_normal((50, 8, 16)); s /= np.linalg.norm(s, axis=2, keepdims=True)
    s[7] = s[3]; s[40] = s[3][::-1]  # a copy, and one under another flip
    a = near_duplicates([s], (0.99,), chunk=6)
    assert a.tolist() == near_duplicates([s], (0.99,), chunk=1024).tolist() == [[3, 7], [3, 40], [7, 40]]


# ---- statistics ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('n,conf', [(3, 0.95), (5, 0.9), (10, 0.99)])
def test_seed_interval_matches_scipy(n, conf):
    v = np.random.default_rng(n).normal(0.7, 0.05, n)
    ci = seed_interval(v, conf)
    lo, hi = scipy.stats.t.interval(conf, n - 1, loc=v.mean(), scale=scipy.stats.sem(v))
    assert (ci.lo, ci.hi, ci.mean) == pytest.approx((lo, hi, v.mean()))


def test_seed_interval_errors():
    with pytest.raises(ValueError, match='empty'): seed_interval([])
    with pytest.raises(ValueError, match='conf=1.5'): seed_interval([1, 2], 1.5)
    assert np.isnan(seed_interval([0.3]).lo)


def test_paired_difference_is_the_t_interval_of_differences():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.05, 4), rng.normal(0.75, 0.05, 4)
    d = paired_difference(a, b)
    ref = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (d.lo, d.hi) == pytest.approx((ref.low, ref.high))
    boot = paired_difference(a, b, n_boot=500, seed=0)
    assert boot.mean == pytest.approx(d.mean) and boot.lo < d.mean < boot.hi


def test_paired_difference_matches_seeds():
    a = pd.Series([1.0, 2.0, 3.0], index=[0, 1, 2])
    b = pd.Series([3.0, 2.0, 1.0], index=[2, 1, 0])  # the same seeds in another order
    assert paired_difference(a, b).mean == pytest.approx(0.0)
    with pytest.warns(UserWarning, match='unmatched seeds'): paired_difference(a, b.drop(0))


@pytest.mark.parametrize('lo,hi,better,want', [(0.1, 0.2, True, 'better'), (0.1, 0.2, False, 'worse'), (-0.2, -0.1, True, 'worse'),
                                               (-0.1, 0.1, True, 'no difference'), (0.0, 0.1, True, 'no difference')])
def test_verdict(lo, hi, better, want):
    assert verdict(SeedInterval((lo + hi) / 2, lo, hi, 3), better) == want


def _cells(gains, metric='auc', task='t', fracs=(0.01, 1.0), seeds=3, noise=0.01, base=0.6):
    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(method=m, task=task, fraction=f, seed=s, metric=metric,
                              value=base + g * (1.5 - f) + noise * rng.standard_normal())
                         for m, g in gains.items() for f in fracs for s in range(seeds)])


def test_summarise_cells_verdicts():
    cells = pd.concat([_cells({'random': 0, 'good': 0.1, 'same': 0}), _cells({'random': 0, 'good': -0.2}, 'mce')])
    s = summarise_cells(cells).set_index(['method', 'fraction', 'metric']).verdict
    assert s[('good', 0.01, 'auc')] == 'better' and s[('good', 0.01, 'mce')] == 'better'  # lower mCE is better
    assert s[('same', 1.0, 'auc')] == 'no difference'
    assert s[('random', 1.0, 'auc')] == 'baseline'
    no_base = summarise_cells(_cells({'good': 0.1}))
    assert set(no_base.verdict) == {'no baseline'}


def test_claims():
    swcl = _cells({'random': 0, 'moco_v2': 0.05, 'swcl': 0.1})
    assert claim_swcl(swcl)['verdict'] == 'supported'
    assert claim_swcl(_cells({'random': 0, 'moco_v2': 0.1, 'swcl': 0.05}))['verdict'] == 'not supported'
    assert claim_swcl(_cells({'random': 0, 'moco_v2': 0.05, 'swcl': 0.05}, noise=0.05))['verdict'] == 'inconclusive at this scale'
    k = pd.concat([_cells({'random': 0, 'moco_v2': 0.1}), _cells({'random': 10, 'moco_v2': 5}, 'epochs_to_95', fracs=(1.0,), base=0)])
    c = claim_kalapos(k)
    assert c['verdict'] == 'supported' and c['numbers'].loc[1, 'diff'] == pytest.approx(0.099, abs=0.02)
    h = pd.concat([_cells({'moco_v2': 0, 'moco_v2_local': 0.05}), _cells({'moco_v2': 20, 'moco_v2_local': 60}, 'effective_rank', fracs=(1.0,), base=0)])
    assert claim_hassanpour(h)['verdict'] == 'supported'
    r = _cells({'random': 0, 'moco_v2': -0.2, 'byol': -0.1}, 'mce', fracs=(1.0,))
    c = claim_srinivasan(r)
    assert c['verdict'] == 'supported' and len(c['numbers']) == 2
    with pytest.raises(ValueError, match="method='swcl'"): claim_swcl(_cells({'random': 0, 'moco_v2': 0.1}))


def test_plots_are_docs_width():
    import matplotlib; matplotlib.use('Agg')
    s = summarise_cells(pd.concat([_cells({'random': 0, 'swcl': 0.1}, task=t) for t in 'abc']))
    for fig in (plot_cell_bars(s, 'auc'), plot_fraction_curves(s, 'auc')):
        w, h = fig.get_size_inches() * 100
        assert w == pytest.approx(700) and h < 1000
        assert sum(a.get_visible() for a in fig.axes) == 3
