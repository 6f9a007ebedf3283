"fundus_ssl.efficiency: the sweep runner on a tiny synthetic run, and the table functions on hand-made tables."
import warnings
import numpy as np, pandas as pd, pytest, torch
from fundus_ssl.efficiency import (fixed_split, labeled_subset, label_efficiency, efficiency_summary,
                                   convergence_table, hierarchical_inits, ssl_epochs, plot_label_efficiency,
                                   plot_convergence, plot_relative_gain)
from fundus_ssl.models import create_encoder, export_encoder
from synthetic_sets import referable_eyepacs
from fundus_ssl.data import classification_dls

warnings.filterwarnings('ignore', category=UserWarning)
torch.set_num_threads(1)


@pytest.fixture(scope='module')
def eyepacs(tmp_path_factory):
    return referable_eyepacs(tmp_path_factory.mktemp('eyepacs'), n_patients=24, seed=2)


def make_dls(df): return classification_dls(df, 'referable', size=64, bs=8)


def test_fine_tune_sweep(eyepacs, tmp_path):
    export_encoder(create_encoder('test_resnet'), tmp_path/'enc.safetensors')
    made = []
    def counted():
        made.append(1)
        return create_encoder('test_resnet')
    inits = {'random': 'random', 'file': tmp_path/'enc.safetensors', 'fn': counted}
    results, curves = label_efficiency(inits, eyepacs, make_dls, fractions=(0.5, 1.0), seeds=(0, 1), arch='test_resnet',
                                       label_col='referable', epochs=1, freeze_epochs=1, lr=1e-2, verbose=False)
    assert len(made) == 1                                  # each init is made once
    assert len(results) == 3 * 2 * 2 and len(curves) == 3 * 2 * 2 * 2
    assert set(results.columns) >= {'init', 'fraction', 'n_labels', 'seed', 'auc', 'accuracy', 'seconds'}
    n = results.groupby('fraction').n_labels.unique()
    assert len(n[0.5]) == 1 and n[0.5][0] < n[1.0][0]
    # 'random' (seeded) and the exported copy of a same-seeded random test_resnet are the same encoder: same runs
    r = results.set_index(['init', 'fraction', 'seed'])
    assert r.loc['random', 'auc'].tolist() == pytest.approx(r.loc['fn', 'auc'].tolist())
    s = efficiency_summary(results, 'auc')
    assert (s[s.init == 'random'].gain == 0).all() and s.runs.eq(2).all()
    c = convergence_table(curves, 'auc')
    assert set(c.columns) >= {'init', 'fraction', 'epochs', 'steps', 'reached', 'speedup'}
    assert (c.loc[c.init == 'random', 'speedup'].dropna() == 1).all()
    plot_label_efficiency(results); plot_relative_gain(results); plot_convergence(curves)


def test_knn_sweep_and_hierarchical_names(eyepacs):
    inits = hierarchical_inits(lambda n: create_encoder('test_resnet', drop_rate=0.) if n == 0 else create_encoder('resnet18'), (0, 2))
    results, curves = label_efficiency(inits, eyepacs, make_dls, fractions=(1.0,), seeds=(0,), protocol='knn', k=5, verbose=False)
    assert curves.empty and results.protocol.eq('knn').all()
    assert ssl_epochs(results.init).tolist() == [0, 2]


def test_subset_and_tables_by_hand(eyepacs):
    fixed = fixed_split(eyepacs, valid_pct=0.25, seed=0)
    sub = labeled_subset(fixed, 0.1, seed=0, label_col='referable', min_per_class=2)
    assert sub[sub.split == 'train'].referable.value_counts().min() >= 2
    assert sub.attrs == eyepacs.attrs
    with pytest.raises(ValueError, match='fraction'): labeled_subset(fixed, 0)
    # lower is better: the best loss 0.5 over share 0.5 -> target 1.0
    curves = pd.DataFrame(dict(init=['a'] * 3 + ['b'] * 3, epoch=[1, 2, 3] * 2, step=[5, 10, 15] * 2,
                               valid_loss=[2.0, 1.0, 0.5, 3.0, 2.0, 0.9]))
    c = convergence_table(curves, 'valid_loss', share=0.5, reference='a', higher_is_better=False).set_index('init')
    assert c.loc['a', 'steps'] == 10 and c.loc['b', 'steps'] == 15 and c.loc['b', 'speedup'] == pytest.approx(10 / 15)
    with pytest.raises(ValueError, match='positive'):
        convergence_table(curves.assign(valid_loss=-curves.valid_loss), 'valid_loss')
